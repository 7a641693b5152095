"""Every run, test and sweep gets its own folder, even when started in the same second."""

from __future__ import annotations

import concurrent.futures

from omegaconf import OmegaConf

import lmsleep.utils.config  # noqa: F401  (registers the ${lmsleep.pid:} resolver)
from tests.support import compose_config


def _folders(monkeypatch, config_name: str, key: str, pid: int) -> str:
    """The configured folder of a run started at a fixed second by process ``pid``."""
    monkeypatch.setattr("os.getpid", lambda: pid)
    cfg = compose_config(config_name=config_name, keep_hydra=True)
    OmegaConf.register_new_resolver("now", lambda pattern: "2026-01-01_00-00-00", replace=True)
    return OmegaConf.select(cfg, key)


def test_runs_started_in_the_same_second_get_their_own_folders(monkeypatch):
    try:
        for config_name, key in (
            ("fit", "hydra.run.dir"),
            ("fit", "hydra.sweep.dir"),
            ("test", "hydra.run.dir"),
        ):
            a, b = (_folders(monkeypatch, config_name, key, pid) for pid in (1234, 1235))
            assert a != b and a.startswith("logs/") and "2026-01-01_00-00-00" in a, (config_name, key, a, b)
    finally:  # Hydra's own `now` resolver back
        OmegaConf.register_new_resolver(
            "now", lambda pattern: __import__("datetime").datetime.now().strftime(pattern), replace=True
        )


def test_two_fits_at_once_write_two_run_folders(cli, tiny, tmp_path):
    args = ["fit", "debug=fdr", *tiny, f"paths.log_dir={tmp_path}/logs"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda seed: cli(*args, f"seed={seed}", cwd=tmp_path, timeout=120), (0, 1)))
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((tmp_path / "logs" / "fit" / "runs").iterdir())
    assert len(runs) == 2
    assert sorted(OmegaConf.load(run / "config.yaml").seed for run in runs) == [0, 1]
