"""An enrichment join: each order with its customer's current record.

Reads customers from topic ``customers`` (key = customer id, JSON values such
as ``{"name": "Ada", "tier": "gold"}``; an event without a value deletes the
customer) into a table, and orders from topic ``orders`` (JSON values such as
``{"order": 1, "customer": "c1", "total": 30}``). Orders are re-keyed by
customer (through an internal repartition topic, so they meet their customer's
partition) and joined with the table; the enriched orders go to topic
``orders-enriched`` keyed by customer. Orders of unknown customers go on with
``"customer_name": null`` (a left join).

Run it: ``headwater run examples/order_enrichment.py --url URL``; try it in
memory: ``python examples/order_enrichment.py``.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

try:
    import headwater
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))
    import headwater

from headwater.processing import Job


def enrich(order: dict[str, Any], customer: dict[str, Any] | None) -> dict[str, Any]:
    """The order with the customer's name and tier (None when unknown)."""
    return {
        **order,
        "customer_name": customer["name"] if customer else None,
        "tier": customer["tier"] if customer else None,
    }


job = Job("order-enrichment")
customers = job.table("customers", key=str, value="json", name="customers")
(
    job.stream("orders", value="json")
    .key_by(lambda order: order["customer"])
    .join(customers, enrich, left=True)
    .to("orders-enriched")
)


async def demo() -> None:
    """Two customers, three orders (one of an unknown customer)."""
    from headwater.processing import TestDriver

    driver = TestDriver(job, {"customers": 2, "orders": 2})
    await driver.pipe("customers", {"name": "Ada", "tier": "gold"}, key="c1")
    await driver.pipe("customers", {"name": "Grace", "tier": "silver"}, key="c2")
    for order, customer in [(1, "c1"), (2, "c2"), (3, "c9")]:
        await driver.pipe("orders", {"order": order, "customer": customer, "total": 10 * order})
    for key, value in driver.read("orders-enriched", key=str, value="json"):
        print(key, value)
    names = [v["customer_name"] for _k, v in driver.read("orders-enriched", value="json")]
    assert names == ["Ada", "Grace", None]


if __name__ == "__main__":
    import trio

    trio.run(demo)
    print("headwater", headwater.__version__, "- order enrichment done")
