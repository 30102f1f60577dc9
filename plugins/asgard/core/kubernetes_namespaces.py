"""Which Kubernetes namespaces each team's models may be served in (``ASGARD_KUBERNETES_NAMESPACES``).

One Airflow serves many ML teams; a namespace is where a team's quotas, RBAC and network policies
live, so a deploy goes only where the model's team may go. The setting names, per team, its
namespaces, the first its default::

    default=ml-serving;a=ml-a,ml-a-canary;b=ml-b

A team it does not name may deploy nowhere, except the default team, which keeps
``ASGARD_SERVING_NAMESPACE`` (``asgard``) when the setting leaves it out: an installation that sets
nothing deploys as it always did. A namespace belongs to one team only.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asgard.core.settings import Settings

SETTING = "ASGARD_KUBERNETES_NAMESPACES"
# A namespace is a DNS-1123 label (what deploy_model's ``namespace`` Param allows, too).
NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@functools.cache
def parse_team_namespaces(text: str) -> Mapping[str, tuple[str, ...]]:
    """``"team=ns1,ns2;other=ns3"`` as {team: namespaces}; a ValueError naming the first bad part.

    Parsed once per value (the settings validate it as they load; deploys read the cached result).
    """
    teams: dict[str, tuple[str, ...]] = {}
    owners: dict[str, str] = {}
    for entry in (item.strip() for item in text.split(";")):
        if not entry:
            continue
        team, sep, names = (part.strip() for part in entry.partition("="))
        namespaces = tuple(name.strip() for name in names.split(","))
        if not sep or not team or not names or "" in namespaces:
            raise ValueError(f"entry {entry!r} is not 'team=namespace[,namespace...]'")
        if team in teams:
            raise ValueError(f"names team {team!r} twice")
        for namespace in namespaces:
            if not NAMESPACE.match(namespace):
                raise ValueError(
                    f"namespace {namespace!r} of team {team!r} is not a Kubernetes namespace name "
                    "(lower-case letters, digits and '-', at most 63)"
                )
            if namespace in owners:
                raise ValueError(
                    f"gives namespace {namespace!r} to team {owners[namespace]!r} and to team {team!r}: "
                    "a namespace belongs to one team"
                )
            owners[namespace] = team
        teams[team] = namespaces
    return MappingProxyType(teams)


def checked_team_namespaces(text: str) -> str:
    """The setting's value, once it parses (the settings' validator: a bad value stops them loading)."""
    parse_team_namespaces(text)
    return text


def team_namespaces(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Per team, the namespaces its models may be served in, its default first."""
    named = dict(parse_team_namespaces(settings.kubernetes_namespaces))
    taken = {namespace for namespaces in named.values() for namespace in namespaces}
    if settings.default_team not in named and settings.serving_namespace not in taken:
        named[settings.default_team] = (settings.serving_namespace,)
    return named


def namespace_for(team: str, requested: str | None, settings: Settings, *, model_name: str | None = None) -> str:
    """The namespace a deploy of ``team``'s model goes to: ``requested`` when the team may use it, the
    team's default when None; an InputError naming the namespace, the team and what it may use."""
    # (imported here: the settings validate through this module while Airflow itself is still importing)
    from asgard.core.errors import InputError

    allowed = team_namespaces(settings).get(team, ())
    whose = f"model {model_name!r} belongs to team {team!r}" if model_name else f"the model belongs to team {team!r}"
    if not allowed:
        raise InputError(f"{whose}, which may deploy to no Kubernetes namespace ({SETTING} names none for it)")
    if not requested:
        return allowed[0]
    if requested not in allowed:
        raise InputError(
            f"namespace {requested!r} is not one the deploy may use: {whose}, which may deploy to "
            f"{', '.join(allowed)} only ({SETTING})"
        )
    return requested


EGRESS_SETTING = "ASGARD_KUBERNETES_SERVING_EGRESS"


@functools.cache
def parse_serving_egress(text: str) -> tuple[tuple[str, int], ...]:
    """``"10.0.12.0/24:6379,10.0.40.7/32:443"`` as ((cidr, port), ...): where serving pods may connect
    beyond cluster DNS (the online store, say). A ValueError naming the first bad entry."""
    import ipaddress

    allowed = []
    for entry in (item.strip() for item in text.split(",")):
        if not entry:
            continue
        cidr, _, port = entry.rpartition(":")
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError:
            network = None
        if network is None or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{EGRESS_SETTING}: entry {entry!r} is not 'cidr:port' (10.0.12.0/24:6379)")
        allowed.append((str(network), int(port)))
    return tuple(allowed)


def checked_serving_egress(text: str) -> str:
    parse_serving_egress(text)
    return text
