"""W&B mode: offline unless logged in; an explicit WANDB_MODE always wins."""

from __future__ import annotations

from m2gan.loggers import resolve_wandb_mode, wandb_logged_in


def test_offline_without_any_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not wandb_logged_in()
    assert resolve_wandb_mode("auto") == "offline"


def test_online_with_a_key_and_explicit_mode_wins(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "dummy-key-for-tests")
    assert resolve_wandb_mode("auto") == "online"
    assert resolve_wandb_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("online") == "disabled"


def test_netrc_login_counts(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert wandb_logged_in()


def test_wandb_init_arguments_reach_the_run(monkeypatch, tmp_path):
    import wandb

    from m2gan.loggers import AutoWandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = AutoWandbLogger(
        save_dir=str(tmp_path), id="probe42", tags=["ablation", "cpu"], group="sweep-1", notes="a probe",
        init_kwargs={"job_type": "probe"},
    )  # fmt: skip
    run = logger.experiment
    try:
        assert (run.id, tuple(run.tags), run.group, run.notes, run.job_type) == (
            "probe42", ("ablation", "cpu"), "sweep-1", "a probe", "probe"
        )  # fmt: skip
        assert logger.run_folder == str(tmp_path / "m2gan" / "probe42")
    finally:
        wandb.finish()
        wandb.teardown()  # stops W&B's service, which later child processes would otherwise inherit


def test_evaluation_metrics_keep_their_best_value_in_the_summary():
    from m2gan.loggers import summary_of

    assert summary_of("val/fid_2k") == summary_of("test/fid_shapes_2k") == summary_of("val/caption_loss") == "min"
    assert summary_of("val/bleu4") == summary_of("val/attr_acc/shape") == summary_of("val/match_acc") == "max"
    assert summary_of("train/d_loss") is None and summary_of("val/unknown") is None
