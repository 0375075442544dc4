"""Endpoints and their revisions: deploy, weights, shadow, canary steps and rollback, promote."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from passerelle.client import LocalClient
from passerelle.endpoints import DeploySpec, Endpoints
from passerelle.errors import ConflictError, InvalidInputError, NotFoundError
from passerelle.policy import CanaryGates, parse_duration, parse_steps, parse_weighted, sticky_bucket
from tests.helpers import small_model


@pytest.fixture
def endpoints(any_client: LocalClient) -> Endpoints:
    model, frame = small_model()
    for _ in range(3):
        any_client.register(model, "churn", sample=frame)
    any_client.set_alias("churn", "champion", 1)
    return Endpoints(any_client.ctx, any_client.registry)


def test_deploy_pins_the_alias(endpoints: Endpoints, any_client: LocalClient) -> None:
    rev = endpoints.deploy("churn-api", DeploySpec(routes=[("churn@champion", 100)]), reason="launch")
    assert (rev.number, rev.kind) == (1, "deploy")
    assert [r.ref for r in rev.policy.routes] == ["churn:1"]
    any_client.set_alias("churn", "champion", 2)
    assert endpoints.get("churn-api").policy.routes[0].ref == "churn:1"  # moving the alias changes nothing
    assert endpoints.states() == {"churn-api": 1}


def test_ab_split_with_sticky_key_and_shadow(endpoints: Endpoints) -> None:
    spec = DeploySpec(
        routes=[("churn:1", 90), ("churn:2", 10)], sticky_key="customer_id", shadows=[("churn:3", 25.0)]
    )
    rev = endpoints.deploy("churn-api", spec)
    assert [(r.ref, r.weight) for r in rev.policy.routes] == [("churn:1", 90), ("churn:2", 10)]
    assert rev.policy.sticky_key == "customer_id"
    assert [(s.ref, s.percent) for s in rev.policy.shadows] == [("churn:3", 25.0)]
    assert rev.policy.versions() == ["churn:1", "churn:2", "churn:3"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (DeploySpec(routes=[("churn:1", 90), ("churn:2", 20)]), "sum to 100, got 110"),
        (DeploySpec(routes=[("churn:1", 100)], shadows=[("churn:1", 100.0)]), "cannot both serve and shadow"),
        (DeploySpec(routes=[("churn:9", 100)]), "churn:9 does not exist"),
        (DeploySpec(routes=[("ghost:1", 100)]), "model 'ghost' does not exist"),
        (DeploySpec(routes=[("churn:1", 100)], canary="churn:2", steps=[5, 50]), "last step must be 100"),
    ],
)
def test_bad_policies_are_refused_with_the_reason(
    endpoints: Endpoints, spec: DeploySpec, message: str
) -> None:
    with pytest.raises((InvalidInputError, NotFoundError), match=message):
        endpoints.deploy("churn-api", spec)
    with pytest.raises(NotFoundError):
        endpoints.get("churn-api")  # nothing half-created


def test_archived_and_incompatible_versions_are_refused(
    endpoints: Endpoints, any_client: LocalClient
) -> None:
    any_client.set_archived("churn:3", True)
    with pytest.raises(ConflictError, match="archived"):
        endpoints.deploy("churn-api", DeploySpec(routes=[("churn:1", 50), ("churn:3", 50)]))
    model, frame = small_model()
    other = frame.rename(columns={"score": "rating"})
    any_client.register(model.fit(other, [0, 1] * 100), "churn", sample=other)
    with pytest.raises(ConflictError, match="not compatible with churn:1"):
        endpoints.deploy("churn-api", DeploySpec(routes=[("churn:1", 50), ("churn:4", 50)]))


def test_promote_moves_route_and_alias_in_one_revision(endpoints: Endpoints, any_client: LocalClient) -> None:
    endpoints.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)], shadows=[("churn:2", 100.0)]))
    rev = endpoints.promote("churn-api", "churn:2", reason="better auc")
    assert (rev.number, rev.kind) == (2, "promote")
    assert [r.ref for r in rev.policy.routes] == ["churn:2"]
    assert rev.policy.shadows == []
    assert any_client.get_version("churn@champion").number == 2
    actions = [e.action for e in any_client.audit(limit=2)]
    assert actions == ["endpoint.promote", "alias.set"]


def test_rollback_reapplies_an_earlier_revision(endpoints: Endpoints) -> None:
    endpoints.deploy("churn-api", DeploySpec(routes=[("churn:1", 100)]))
    endpoints.deploy("churn-api", DeploySpec(routes=[("churn:1", 50), ("churn:2", 50)]))
    endpoints.set_weights("churn-api", [("churn:1", 20), ("churn:2", 80)], reason="ramp")
    rev = endpoints.rollback("churn-api", reason="errors")
    assert (rev.number, rev.kind) == (4, "rollback")
    assert [(r.ref, r.weight) for r in rev.policy.routes] == [("churn:1", 50), ("churn:2", 50)]
    rev = endpoints.rollback("churn-api", to=1)
    assert [(r.ref, r.weight) for r in rev.policy.routes] == [("churn:1", 100)]
    history = endpoints.revisions("churn-api")
    assert [h.kind for h in history] == ["rollback", "rollback", "weights", "update", "deploy"]
    assert history[2].reason == "ramp"
    with pytest.raises(NotFoundError, match="no revision 42"):
        endpoints.rollback("churn-api", to=42)


def _canary(endpoints: Endpoints) -> None:
    spec = DeploySpec(
        routes=[("churn:1", 100)],
        canary="churn:2",
        steps=[10, 50, 100],
        step_interval_s=60,
        gates=CanaryGates(max_error_rate=0.05, max_p99_ms=100, max_disagreement=0.2, min_requests=10),
    )
    rev = endpoints.deploy("churn-api", spec)
    assert [(r.ref, r.weight) for r in rev.policy.routes] == [("churn:1", 90), ("churn:2", 10)]


def test_canary_grows_while_gates_hold_then_promotes(endpoints: Endpoints, any_client: LocalClient) -> None:
    _canary(endpoints)
    good = {"requests": 50, "error_rate": 0.0, "p99_ms": 20.0, "disagreement_rate": 0.05}
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61)
    assert endpoints.canary_tick("churn-api", lambda *a: good) is None  # interval not elapsed
    rev = endpoints.canary_tick("churn-api", lambda *a: good, now=later)
    assert rev is not None
    assert rev.kind == "canary-step"
    assert [(r.ref, r.weight) for r in rev.policy.routes] == [("churn:1", 50), ("churn:2", 50)]
    rev = endpoints.canary_tick("churn-api", lambda *a: good, now=later + dt.timedelta(seconds=61))
    assert rev is not None
    assert [(r.ref, r.weight) for r in rev.policy.routes] == [("churn:2", 100)]
    rev = endpoints.canary_tick("churn-api", lambda *a: good, now=later + dt.timedelta(seconds=122))
    assert rev is not None
    assert rev.kind == "canary-done"
    assert any_client.get_version("churn@champion").number == 2


@pytest.mark.parametrize(
    ("figures", "reason"),
    [
        ({"requests": 50, "error_rate": 0.2, "p99_ms": 20.0, "disagreement_rate": 0.0}, "error rate"),
        ({"requests": 50, "error_rate": 0.0, "p99_ms": 500.0, "disagreement_rate": 0.0}, "p99 500.0 ms"),
        ({"requests": 50, "error_rate": 0.0, "p99_ms": 20.0, "disagreement_rate": 0.5}, "disagreement"),
    ],
)
def test_canary_rolls_back_when_a_gate_fails(
    endpoints: Endpoints, figures: dict[str, float], reason: str
) -> None:
    _canary(endpoints)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61)
    rev = endpoints.canary_tick("churn-api", lambda *a: figures, now=later)
    assert rev is not None
    assert rev.kind == "canary-rollback"
    assert reason in rev.reason
    assert [(r.ref, r.weight) for r in rev.policy.routes] == [("churn:1", 100)]
    assert rev.policy.canary is None


def test_canary_waits_for_enough_traffic(endpoints: Endpoints) -> None:
    _canary(endpoints)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61)
    assert endpoints.canary_tick("churn-api", lambda *a: {"requests": 3}, now=later) is None


def test_parsers() -> None:
    assert parse_weighted("churn:3=90", "route") == ("churn:3", 90.0)
    assert parse_weighted("churn@champion", "route") == ("churn@champion", None)
    assert parse_duration("10m") == 600.0
    assert parse_duration("500ms") == 0.5
    assert parse_steps("5,25,50,100") == [5, 25, 50, 100]
    with pytest.raises(InvalidInputError, match="--route"):
        parse_weighted("churn:3=ninety", "route")
    with pytest.raises(InvalidInputError):
        parse_duration("soon")


def test_sticky_buckets_are_stable_and_spread() -> None:
    assert sticky_bucket("C000123") == sticky_bucket("C000123")
    buckets = pd.Series([sticky_bucket(f"C{i}") for i in range(20_000)])
    share = (buckets < 1000).mean()
    assert 0.08 < share < 0.12
