"""report.html renders in headless Chromium with every figure decoded. Chromium (Debian package chromium) is
installed by `make test`; where it is missing the test fails rather than skips, so CI always checks the page."""

import shutil
import subprocess

import matplotlib.image
import pytest

from conftest import invoke

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(pipeline, tmp_path):
    assert CHROMIUM, "headless Chromium is not installed: apt-get install chromium (make test does it as root)"
    report = tmp_path / "report"
    result = invoke("evaluate", pipeline.bundle, "--out", report, "--bootstrap", 10, "--workers", 1, "--quiet")
    assert result.exit_code == 0, result.output
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,2400",
    ]
    url = (report / "report.html").as_uri()
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", url], capture_output=True, encoding="utf-8", timeout=300, check=True
    ).stdout
    assert dom.count("<img") == 8 and "Harrell" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=300, check=True)
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1200) and pixels.std() > 0.05
