"""Look at the flywheel as a user does: the Dagster UI and the MLflow UI on a flywheel home, in a real browser
(Debian's Chromium driven by Playwright), with a screenshot of each page and the links each page offers.

    apt-get install -y chromium && .venv/bin/pip install playwright      # once; no `playwright install`
    .venv/bin/python benchmarks/ui_screenshots.py [--home .flywheel] [--out ui-screenshots] [--cycle 2026-04-01]

Starts `dagster dev` and `mlflow ui` on the home (as `make ui` does) on free loopback ports, opens the asset
graph, the cycle's benchmark_report, cycle_audit (the overview of every cycle), the flywheel_cycle job, the
MLflow experiment, the model page and the audit report that cycle_audit links to; saves one PNG per page and
prints, per page, its URL and the http(s) links in it that lead to the other UI. Run it after `make demo`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"{url} did not come up in {timeout:.0f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default=str(ROOT / ".flywheel"))
    ap.add_argument("--out", default="ui-screenshots")
    ap.add_argument("--cycle", default=None, help="the cycle to open (default: the latest audited)")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} not found: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("playwright is not installed: .venv/bin/pip install playwright") from None

    from flywheel_dagster.config import load_config
    from flywheel_dagster.registry import Registry
    from flywheel_dagster.traces.lake import Lake

    home = Path(args.home).resolve()
    cfg = load_config()
    lake = Lake(str(home / "lake"))
    from flywheel_dagster import audit

    cycles = sorted(audit.Chain(lake).latest_cycle_records())
    if not cycles:
        raise SystemExit(f"no audited cycle under {home}: run `make demo` first")
    cycle = args.cycle or cycles[-1]
    dport, mport = free_port(), free_port()
    dagster_url, mlflow_url = f"http://127.0.0.1:{dport}", f"http://127.0.0.1:{mport}"
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    bin_dir = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [str(bin_dir / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(dport)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        ),
        subprocess.Popen(
            [
                str(bin_dir / "mlflow"),
                "ui",
                "--backend-store-uri",
                f"sqlite:///{home / 'mlflow.db'}",
                "--host",
                "127.0.0.1",
                "--port",
                str(mport),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        ),
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        wait_http(f"{dagster_url}/server_info")
        wait_http(mlflow_url)
        registry = Registry(f"sqlite:///{home / 'mlflow.db'}", cfg.name)
        # The links in the metadata name the configured UIs (ui.*_url); here they run on free ports.
        to_here = lambda u: u.replace(cfg.ui.mlflow_url, mlflow_url).replace(cfg.ui.dagster_url, dagster_url)  # noqa: E731
        pages = [
            ("asset_graph", f"{dagster_url}/asset-groups"),
            ("benchmark_report", f"{dagster_url}/assets/benchmark_report?partition={cycle}"),
            ("benchmark_report_plots", f"{dagster_url}/assets/benchmark_report"),  # its metadata's Plots view
            ("cycle_audit", f"{dagster_url}/assets/cycle_audit?partition={cycle}"),
            ("flywheel_cycle_job", f"{dagster_url}/locations/flywheel/jobs/flywheel_cycle/partitions"),
            ("mlflow_experiment", f"{mlflow_url}/#/experiments/{registry.experiment_id}"),
            ("mlflow_model", f"{mlflow_url}/#/models/{registry.model_name}"),
        ]
        report_run = registry._find_run(f"tags.`flywheel.cycle` = '{cycle}' and tags.`flywheel.stage` = 'audit'")
        if report_run:
            pages.append(
                ("audit_report", to_here(registry.artifact_url(cfg.ui.mlflow_url, report_run, audit.REPORT_FILE)))
            )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
            )
            for name, url in pages:
                # A fresh page each time: MLflow's pages differ only after '#', which is no navigation.
                page = browser.new_page(viewport={"width": 1600, "height": 1800})
                page.goto(url, wait_until="load", timeout=120_000)
                page.wait_for_timeout(4000 if url.startswith(dagster_url) else 10000)
                skip = page.get_by_role("button", name="Skip")  # Dagster's one-time "Join the community" dialog
                if skip.count():
                    skip.first.click()
                    page.wait_for_timeout(500)
                if name.endswith("_plots"):
                    page.get_by_role("button", name="Plots").first.click()
                    page.wait_for_timeout(2500)
                path = out / f"{name}.png"
                page.screenshot(path=str(path), full_page=True)
                hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
                on_dagster = url.startswith(dagster_url)
                other = (cfg.ui.mlflow_url, mlflow_url) if on_dagster else (cfg.ui.dagster_url, dagster_url)
                links = sorted({h for h in hrefs if h.startswith(other)})
                print(json.dumps({"page": name, "url": url, "screenshot": str(path), "links_to_other_ui": links}))
                page.close()
            browser.close()
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    main()
