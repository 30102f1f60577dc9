"""Airflow's UI in a real browser (Debian's Chromium, driven by selenium), clicked through as a user does."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as shown
from selenium.webdriver.support.ui import WebDriverWait

from asgard.local import screenshots

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Headless, and nothing that reaches out: this machine's network is closed (MACHINE.md).
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--window-size={screenshots.WINDOW[0]},{screenshots.WINDOW[1]}",
)


@contextmanager
def chromium() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory(prefix="asgard-chromium-") as profile:
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
        # The page's own size, not the window's: screenshots of every page are exactly the window.
        width, height = screenshots.WINDOW
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        try:
            yield driver
        finally:
            driver.quit()


def wait(driver: WebDriver, seconds: float = 60) -> WebDriverWait:
    return WebDriverWait(driver, seconds)


def screenshot(driver: WebDriver, name: str, *, page: str, shows: str) -> None:
    """Once the page (or the frame the driver is in) shows ``shows``, save it for the docs
    (``docs/screenshots/<name>.png``, see :mod:`asgard.local.screenshots`)."""
    wait(driver).until(lambda d: shows in d.find_element(By.TAG_NAME, "body").text, f"{page}: no {shows!r}")
    screenshots.record(driver.get_screenshot_as_png(), name, page=page, shows=shows)


def button(driver: WebDriver, text: str, within: WebElement | None = None) -> WebElement:
    """The visible, enabled button whose text is ``text`` (inside ``within``, when given)."""
    xpath = f".//button[normalize-space(.)='{text}']"

    def found(_):
        for candidate in (within or driver).find_elements(By.XPATH, xpath):
            if candidate.is_displayed() and candidate.is_enabled():
                return candidate
        return False

    return wait(driver).until(found, f"no button {text!r}")


def visible(selector: str):
    """A wait condition: the first element matching ``selector`` that is displayed."""

    def found(driver: WebDriver):
        return next((e for e in driver.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()), False)

    return found


def log_in(driver: WebDriver, airflow: str, user: str, password: str) -> None:
    """Airflow's own login form; afterwards the browser holds the UI's session cookie."""
    driver.get(f"{airflow}/auth/login")
    wait(driver).until(shown.visibility_of_element_located((By.NAME, "username"))).send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(driver).until(lambda d: "/auth/login" not in d.current_url and d.get_cookie("_token"), "login failed")


def trigger_with_the_forms_defaults(driver: WebDriver, airflow: str, dag_id: str, shows: str = "") -> None:
    """Open the DAG's trigger form, leave every field as the form fills it, press Trigger (with ``shows``:
    once the form shows it, saved as the docs' screenshot of a trigger form)."""
    driver.get(f"{airflow}/dags/{dag_id}")
    button(driver, "Trigger").click()
    dialog = wait(driver).until(visible("[role=dialog]"), "the trigger form did not open")
    if shows:
        screenshot(driver, "trigger-form", page=f"{dag_id}'s trigger form", shows=shows)
    button(driver, "Trigger", within=dialog).click()
    wait(driver).until(shown.invisibility_of_element(dialog), "the trigger form did not close")


def open_the_models_page(driver: WebDriver, airflow: str, model_name: str) -> WebElement:
    """The Models entry of Airflow's navigation: the page in its frame, then one model's page."""
    driver.get(f"{airflow}/plugin/models")
    frame = wait(driver).until(shown.presence_of_element_located((By.CSS_SELECTOR, "iframe[src*='/mlops/ui/models']")))
    driver.switch_to.frame(frame)
    wait(driver).until(shown.element_to_be_clickable((By.LINK_TEXT, model_name))).click()
    return wait(driver).until(shown.presence_of_element_located((By.TAG_NAME, "h1")))


def decide_required_action(driver: WebDriver, option: str, reason: str) -> str:
    """On an approval's form (a task's "Required Action" tab): give the reason, press ``option``
    (Approve or Reject). What the form showed, as text."""
    field = wait(driver).until(visible("input[name=element_reason]"), "the approval form has no reason field")
    screenshot(driver, "approval-form", page="a deployment's approval form", shows="would replace")
    shown = driver.find_element(By.TAG_NAME, "body").text
    field.send_keys(reason)
    button(driver, option).click()
    taken = ("Response received", "Approval Received", "Rejection Received")
    wait(driver).until(lambda d: any(t in d.find_element(By.TAG_NAME, "body").text for t in taken), "no answer taken")
    return shown


def open_required_action(driver: WebDriver, airflow: str, subject: str) -> None:
    """Airflow's Required Actions page, then the pending action with ``subject`` (its form)."""
    driver.get(f"{airflow}/required_actions")
    wait(driver).until(shown.element_to_be_clickable((By.LINK_TEXT, subject)), f"no pending {subject!r}").click()
