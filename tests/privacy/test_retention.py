"""Retention of the prediction log: by age and by rows, per endpoint or by the server's default."""

from __future__ import annotations

from passerelle.client import LocalClient
from passerelle.predictionlog import RETENTION_ACTION, apply_retention, retention_tick
from tests.privacy.conftest import NOW, audit_rows, days_ago, endpoint, kept_label, logged, stored


def test_retention_by_age_and_by_rows_takes_shadows_and_labels_along(local: LocalClient) -> None:
    ctx = local.ctx
    endpoint(ctx, "churn-api", retention={"max_age_days": 30})
    endpoint(ctx, "fraud-api", retention={"max_rows": 2})
    endpoint(ctx, "forever-api", retention={"max_age_days": 0})
    young = logged(ctx, "churn-api", days_ago(10), label=1)
    old = [logged(ctx, "churn-api", days_ago(d), label=0) for d in (40, 50)]
    stale_label = kept_label(ctx, "churn-api", days_ago(45))
    fresh_label = kept_label(ctx, "churn-api", days_ago(5))
    fraud = [logged(ctx, "fraud-api", days_ago(d), label=1) for d in (4, 3, 2, 1)]
    ancient = logged(ctx, "forever-api", days_ago(400))
    # Batch scoring logged these under a name with no endpoint: the server's 60 days apply.
    batch_old = logged(ctx, "churn-batch", days_ago(70), shadow=False)
    batch_new = logged(ctx, "churn-batch", days_ago(59), shadow=False)

    due = local.apply_retention(dry_run=True)
    assert due == {"churn-api": 2, "churn-batch": 1, "fraud-api": 2}
    assert len(stored(ctx)["predictions"]) == 10, "a dry run deletes nothing"

    # One prediction per transaction: the batches add up to one sweep, audited once per endpoint.
    deleted = apply_retention(ctx, batch_rows=1, now=NOW)
    assert deleted == {"churn-api": 2, "churn-batch": 1, "fraud-api": 2}
    left = stored(ctx)
    assert left["predictions"] == {young, *fraud[2:], ancient, batch_new}
    assert left["shadows"] == {young, *fraud[2:], ancient}
    assert left["feedback"] == {young, *fraud[2:]}
    assert left["feedback_unmatched"] == {fresh_label}
    assert stale_label not in left["feedback_unmatched"]
    assert not set(old) & left["predictions"]
    assert batch_old not in left["predictions"]

    records = {r.target: r for r in audit_rows(ctx, RETENTION_ACTION)}
    assert set(records) == {"churn-api", "churn-batch", "fraud-api"}
    assert records["churn-api"].after == {
        "predictions": 2,
        "shadows": 2,
        "feedback": 2,
        "feedback_unmatched": 1,
        "max_age_days": 30,
        "max_rows": None,
    }
    assert records["fraud-api"].after is not None
    assert records["fraud-api"].after["max_rows"] == 2
    assert records["churn-api"].before is None

    # Nothing more is due: a second sweep deletes nothing and records nothing.
    assert apply_retention(ctx, now=NOW) == {"churn-api": 0, "churn-batch": 0, "fraud-api": 0}
    assert len(audit_rows(ctx, RETENTION_ACTION)) == 3


def test_the_periodic_tick_sweeps_once_per_interval(local: LocalClient) -> None:
    ctx = local.ctx
    endpoint(ctx, "churn-api", retention={"max_rows": 1})
    first = logged(ctx, "churn-api", days_ago(2))
    logged(ctx, "churn-api", days_ago(1))
    assert retention_tick(ctx, holder="w0") == {"churn-api": 1}
    assert first not in stored(ctx)["predictions"]
    logged(ctx, "churn-api", days_ago(0.5))
    # Within the interval every worker, the same one included, is turned away.
    assert retention_tick(ctx, holder="w0") is None
    assert retention_tick(ctx, holder="w1") is None
    assert len(stored(ctx)["predictions"]) == 2
