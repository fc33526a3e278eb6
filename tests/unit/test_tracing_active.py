"""`tracing.active()` is asked for every message, so it must be cheap, yet see a provider."""

from __future__ import annotations

import pytest

from bus import tracing

trace = pytest.importorskip("opentelemetry.trace")


def test_active_looks_at_opentelemetry_at_most_once_a_second_until_a_provider_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    looks: list[int] = []
    proxy = trace.ProxyTracerProvider()
    real = object()  # anything but the proxy counts as an installed SDK provider
    provider: object = proxy

    def get_tracer_provider() -> object:
        looks.append(1)
        return provider

    clock = [100.0]
    monkeypatch.setattr(tracing.trace, "get_tracer_provider", get_tracer_provider)
    monkeypatch.setattr(tracing.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(tracing, "_installed", False)
    monkeypatch.setattr(tracing, "_next_look", 0.0)

    assert [tracing.active() for _ in range(1000)] == [False] * 1000
    assert len(looks) == 1
    provider = real
    assert not tracing.active()  # within the second: not looked at again
    clock[0] += 1.0
    assert tracing.active()
    clock[0] += 100.0
    provider = proxy  # OpenTelemetry never unsets a provider: the answer stays
    assert all(tracing.active() for _ in range(1000))
    assert len(looks) == 2
