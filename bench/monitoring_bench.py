"""Benchmark: ``monitor_model``'s drift suite vs a per-column scipy loop vs Evidently's data drift preset.

Data: ``--rows`` current rows x 20 features (15 numeric of several shapes, 5 categorical), three of
them shifted, against a reference of the same size. The reference side is what training logs
(``training_data.reference_profile`` and a 50k-row sample), built outside the clock as training
builds it. Timed on the same current data:

- asgard: ``drift.numeric_statistics`` / ``drift.categorical_statistics`` for every column (PSI,
  Jensen-Shannon, KS with its p-value, Wasserstein, out-of-range / chi-square, unseen);
- scipy: a plain per-column loop over scipy's functions (``ks_2samp``, ``wasserstein_distance``,
  ``jensenshannon``, ``chisquare``, ``np.histogram``) on the same reference sample — also the
  reference the statistics are checked against (max difference must be <= 1e-9, else exit 1);
- evidently: ``DataDriftPreset`` on reference and current frames, in its own virtualenv
  (``.cache/bench-evidently``, created on first use: Evidently needs pandas < 3).

    python bench/monitoring_bench.py                              # 1M rows, with Evidently
    python bench/monitoring_bench.py --rows 20000 --no-evidently  # smoke size
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "include")]

EVIDENTLY_VENV = REPO / ".cache" / "bench-evidently"
NUMERIC, CATEGORICAL = 15, 5
SHIFTED = ("num_0", "num_7", "cat_2")


def make_frame(rows: int, seed: int, *, shifted: bool = False):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    columns = {}
    for index in range(NUMERIC):
        kind = index % 3
        if kind == 0:
            values = rng.normal(10 * index, 1 + index, rows)
        elif kind == 1:
            values = rng.lognormal(1 + index / 10, 0.6, rows)
        else:
            values = rng.poisson(2 + index, rows).astype(float)
        if shifted and f"num_{index}" in SHIFTED:
            values = values + 0.25 * values.std()
        columns[f"num_{index}"] = values
    for index in range(CATEGORICAL):
        categories = np.array([f"c{index}_{k}" for k in range(4 + index)])
        weights = np.linspace(1, 2, len(categories))
        if shifted and f"cat_{index}" in SHIFTED:
            weights = weights[::-1]
        columns[f"cat_{index}"] = categories[rng.choice(len(categories), rows, p=weights / weights.sum())]
    return pd.DataFrame(columns)


def asgard_suite(current, references) -> dict[str, dict[str, float]]:
    from asgard.monitoring import drift

    results = {}
    for name, ref in references.items():
        if isinstance(ref, drift.NumericReference):
            stats = drift.numeric_statistics(current[name].to_numpy(dtype=float), ref)
        else:
            stats = drift.categorical_statistics(current[name], ref)
        results[name] = stats.metrics
    return results


def naive_psi(expected, actual) -> float:
    """PSI written out from its definition (scipy has none), with the same floor for empty bins."""
    import numpy as np

    from asgard.monitoring import drift

    e, a = np.maximum(expected, drift.PSI_FLOOR), np.maximum(actual, drift.PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def scipy_suite(current, references) -> dict[str, dict[str, float]]:
    import numpy as np
    from scipy import stats
    from scipy.spatial.distance import jensenshannon

    from asgard.monitoring import drift

    results = {}
    for name, ref in references.items():
        if isinstance(ref, drift.NumericReference):
            values = current[name].to_numpy(dtype=float)
            ks = stats.ks_2samp(ref.sorted_sample, values, method="asymp")
            expected = ref.bin_counts / ref.bin_counts.sum()
            edges = np.concatenate(([-np.inf], ref.bin_edges[1:-1], [np.inf]))
            actual = np.histogram(values, bins=edges)[0] / len(values)
            results[name] = {
                "psi": naive_psi(expected, actual),
                "js_divergence": float(jensenshannon(expected, actual, base=2)),
                "ks_statistic": float(ks.statistic),
                "ks_p_value": float(ks.pvalue),
                "wasserstein": float(stats.wasserstein_distance(ref.sorted_sample, values)),
            }
        else:
            counts = current[name].value_counts()
            observed = counts.reindex(ref.categories, fill_value=0).to_numpy()
            unseen = int(counts.sum() - observed.sum())
            frequencies = ref.frequencies / ref.frequencies.sum()
            chi = stats.chisquare(observed, frequencies * observed.sum())
            expected = np.append(frequencies, 0.0)
            actual = np.append(observed, unseen) / (observed.sum() + unseen)
            results[name] = {
                "psi": naive_psi(expected, actual),
                "js_divergence": float(jensenshannon(expected, actual, base=2)),
                "chi_square": float(chi.statistic),
                "chi_square_p_value": float(chi.pvalue),
            }
    return results


def references_from_training(reference) -> dict:
    """What training logs (profile + 50k sample), turned into the monitoring references."""
    from asgard.monitoring.reference import feature_references
    from asgard.training import data as training_data

    profile = training_data.reference_profile(reference, reference.iloc[:, 0])
    return feature_references(profile, reference.sample(min(len(reference), 50_000), random_state=0))


EVIDENTLY_SCRIPT = """
import json, sys, time
import pandas as pd
reference, current = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
try:
    from evidently import Report
    from evidently.presets import DataDriftPreset
    new_api = True
except ImportError:
    from evidently.report import Report
    from evidently.metric_preset import DataDriftPreset
    new_api = False
started = time.perf_counter()
report = Report([DataDriftPreset()]) if new_api else Report(metrics=[DataDriftPreset()])
result = report.run(reference_data=reference, current_data=current) if new_api else report.run(
    reference_data=reference, current_data=current)
seconds = time.perf_counter() - started
scores = {}
try:
    data = (result if new_api else report).dict()
    for metric in data.get("metrics", []):
        text = json.dumps(metric, default=str)
        for column in reference.columns:
            if f'"{column}"' in text and isinstance(metric.get("value"), (int, float)):
                scores.setdefault(column, metric["value"])
except Exception as error:
    scores = {"error": str(error)}
import resource
print(json.dumps({"seconds": seconds, "scores": scores,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_evidently(reference_path: Path, current_path: Path) -> dict:
    python = EVIDENTLY_VENV / "bin" / "python"
    if not python.exists():
        print("creating the Evidently virtualenv (first use) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(EVIDENTLY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "evidently", "pandas<3", "pyarrow"], check=True)
    out = subprocess.run(
        [str(python), "-c", EVIDENTLY_SCRIPT, str(reference_path), str(current_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-evidently", action="store_true")
    args = parser.parse_args()

    reference, current = make_frame(args.rows, 0), make_frame(args.rows, 1, shifted=True)
    references = references_from_training(reference)

    started = time.perf_counter()
    ours = asgard_suite(current, references)
    asgard_seconds = time.perf_counter() - started
    started = time.perf_counter()
    theirs = scipy_suite(current, references)
    scipy_seconds = time.perf_counter() - started

    worst = max(abs(ours[name][key] - value) for name, metrics in theirs.items() for key, value in metrics.items())
    print(f"{args.rows} rows x {NUMERIC + CATEGORICAL} features ({NUMERIC} numeric, {CATEGORICAL} categorical)")
    print(f"asgard drift suite: {asgard_seconds:.2f}s")
    print(f"scipy per-column loop: {scipy_seconds:.2f}s  (ratio scipy / asgard: {scipy_seconds / asgard_seconds:.1f}x)")
    print(f"largest difference from scipy over every statistic: {worst:.3g}")

    evidently = None
    if not args.no_evidently:
        with tempfile.TemporaryDirectory() as scratch:
            reference_path, current_path = Path(scratch) / "reference.parquet", Path(scratch) / "current.parquet"
            reference.to_parquet(reference_path)
            current.to_parquet(current_path)
            evidently = run_evidently(reference_path, current_path)
        ratio = evidently["seconds"] / asgard_seconds
        print(f"evidently DataDriftPreset: {evidently['seconds']:.2f}s, peak RSS {evidently['peak_rss_mb']:.0f} MB")
        print(f"ratio evidently / asgard: {ratio:.1f}x (target >= 30x)")

    print(f"{'feature':<8} {'drift_score':>11} {'psi':>8} {'js':>8} {'ks':>8} {'wasserstein':>12} {'evidently':>10}")
    for name in references:
        metrics = ours[name]
        their = (evidently or {}).get("scores", {}).get(name)
        print(
            f"{name:<8} {metrics['drift_score']:>11.4f} {metrics['psi']:>8.4f} {metrics['js_divergence']:>8.4f} "
            f"{metrics.get('ks_statistic', float('nan')):>8.4f} {metrics.get('wasserstein', float('nan')):>12.4f} "
            f"{their if their is not None else '':>10}"
        )
    if worst > 1e-9:
        print("FAILED: the statistics differ from scipy's by more than 1e-9", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
