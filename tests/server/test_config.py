"""Settings: the BAP_* names others rely on, flags over environment, bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server import Settings
from server.__main__ import build_parser, load_settings

# Deployment files (Dockerfile, compose) use these names; renaming one breaks them.
DEPLOYED = {
    "BAP_STORE",
    "BAP_MODEL",
    "BAP_HOST",
    "BAP_PORT",
    "BAP_MAX_BATCH_SIZE",
    "BAP_MAX_BATCH_DELAY_MS",
    "BAP_MAX_QUEUE",
    "BAP_MAX_BODY_BYTES",
    "BAP_MAX_PIXELS",
    "BAP_THREADS",
    "BAP_ADMIN_TOKEN",
    "BAP_LOG_LEVEL",
    "BAP_BATCHING",
}


def test_every_deployed_name_is_a_setting_and_a_flag() -> None:
    fields = {f"BAP_{name.upper()}" for name in Settings.model_fields}
    assert fields >= DEPLOYED
    assert vars(build_parser().parse_args([])).keys() == Settings.model_fields.keys()
    help_text = build_parser().format_help()
    assert all(f"--{name.replace('_', '-')}" in help_text for name in Settings.model_fields)


def test_defaults_serve_the_bundled_model_on_loopback() -> None:
    s = Settings()
    assert s.store == Path(__file__).resolve().parents[2] / "model_store" / "bundled"
    assert (s.model, s.host, s.port, s.batching) == ("embedded", "127.0.0.1", 8000, "auto")
    assert s.admin_token is None


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BAP_STORE", str(tmp_path))
    monkeypatch.setenv("BAP_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("BAP_BATCHING", "mixed")
    monkeypatch.setenv("BAP_ADMIN_TOKEN", "a-long-enough-admin-token")
    s = Settings()
    assert (s.store, s.max_batch_size, s.batching) == (tmp_path, 8, "mixed")
    assert s.admin_token is not None
    assert "a-long" not in repr(s)  # the token never shows in logs or reprs


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAP_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("BAP_PORT", "9000")
    s = load_settings(["--max-batch-size", "3", "--max-batch-delay-ms", "2.5"])
    assert (s.max_batch_size, s.max_batch_delay_ms, s.port) == (3, 2.5, 9000)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--batching", "fastest"], "--batching"),
        (["--max-batch-size", "0"], "--max-batch-size"),
        (["--port", "70000"], "--port"),
        (["--admin-token", "short"], "16"),
    ],
)
def test_bad_values_stop_with_the_setting_named(flags: list[str], named: str) -> None:
    with pytest.raises(SystemExit) as exc:
        load_settings(flags)
    assert named in str(exc.value)


def test_empty_token_means_admin_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAP_ADMIN_TOKEN", "")
    assert Settings().admin_token is None


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(max_batch=3)  # type: ignore[call-arg]


def test_the_admin_token_can_come_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A flag shows in `ps`; a mounted secret file does not. One source only."""
    token = "t" * 24
    secret = tmp_path / "token"
    secret.write_text(token + "\n")
    monkeypatch.setenv("BAP_ADMIN_TOKEN_FILE", str(secret))
    assert Settings().admin_token.get_secret_value() == token  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not both"):
        Settings(admin_token=token)
    secret.write_text("short")
    with pytest.raises(ValueError, match="at least"):
        Settings()
    monkeypatch.setenv("BAP_ADMIN_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot read"):
        Settings()


def test_the_old_threads_name_still_works_with_a_deprecation_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("BAP_TORCH_THREADS", "2")
    with caplog.at_level("WARNING", logger="server"):
        assert Settings().threads == 2
    assert "BAP_TORCH_THREADS is deprecated: set BAP_THREADS" in caplog.text
    monkeypatch.setenv("BAP_THREADS", "3")  # the new name wins
    assert Settings().threads == 3
