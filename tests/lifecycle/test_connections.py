from dataclasses import replace

from sollol_proxy.config.access import ClientLimits
from sollol_proxy.config.model import Config
from sollol_proxy.lifecycle.connections import ConnectionBook


def limited(total: int, per_client: int) -> Config:
    return replace(
        Config(),
        max_connections=total,
        client_limits=replace(ClientLimits(), max_per_client=per_client),
    )


def test_a_client_over_its_share_is_refused_while_others_are_accepted() -> None:
    book, config = ConnectionBook(), limited(total=10, per_client=2)
    assert book.open("10.0.0.1", config) is None
    assert book.open("10.0.0.1", config) is None
    over = book.open("10.0.0.1", config)
    assert over is not None and "from this client (limit 2 per client)" in over
    assert book.open("10.0.0.2", config) is None
    assert (book.accepted, book.refused) == (3, 1)


def test_the_total_limit_applies_across_clients_and_a_close_gives_the_slot_back() -> None:
    book, config = ConnectionBook(), limited(total=2, per_client=2)
    book.open("a", config)
    book.open("b", config)
    assert book.open("c", config) == "too many open connections (limit 2)"
    book.close("c", refused=True)
    book.close("a", refused=False)
    assert book.open("c", config) is None
    assert dict(book.by_client) == {"b": 1, "c": 1}  # no zero entries kept for gone clients
    assert book.refused == 0
