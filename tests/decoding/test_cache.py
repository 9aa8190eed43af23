import torch

from tokenleap.decoding.cache import StaticKVCache


def filled(batch=2, n=5):
    c = StaticKVCache(num_layers=2, batch=batch, kv_heads=1, head_dim=2, capacity=4, dtype=torch.float32)
    c.reserve(n)
    for layer in c.keys + c.values:
        layer[:, 0, :n, 0] = torch.arange(n).float() + 100 * torch.arange(batch)[:, None]
    c.length = n
    return c


def test_reserve_grows_and_keeps_entries():
    c = filled(n=5)
    assert c.capacity >= 5
    c.reserve(50)
    assert c.capacity >= 50
    assert c.keys[1][1, 0, :5, 0].tolist() == [100, 101, 102, 103, 104]


def test_rollback_is_a_cursor_move():
    c = filled()
    c.rollback(2)
    assert c.length == 2
    assert c.keys[0][0, 0, 4, 0] == 4  # stale slot untouched, simply ignored


def test_select_rows_reorders_and_expands():
    c = filled()
    c.select_rows(torch.tensor([1, 1]))
    assert c.keys[0][0, 0, :5, 0].tolist() == [100, 101, 102, 103, 104]
    c.select_rows(torch.tensor([0, 0, 1]))
    assert c.batch == 3


def test_select_rows_from_a_shared_context_copies_only_later_positions():
    c = filled()
    c.select_rows(torch.tensor([1, 1]), start=3)  # the caller says rows agree before 3
    assert c.values[1][0, 0, :5, 0].tolist() == [0, 1, 2, 103, 104]  # 0..2 not copied
    assert c.values[1][1, 0, :5, 0].tolist() == [100, 101, 102, 103, 104]
    c.select_rows(torch.tensor([0, 1, 1]), start=3)  # a new batch size copies every position
    assert c.batch == 3 and c.keys[0][2, 0, :5, 0].tolist() == [100, 101, 102, 103, 104]


def test_keep_positions_packs_a_path():
    c = filled(batch=1, n=6)
    c.keep_positions(2, torch.tensor([1, 3]))
    assert c.length == 4
    assert c.values[1][0, 0, :4, 0].tolist() == [0, 1, 3, 5]


def test_keeping_a_prefix_is_a_rollback():
    c = filled(batch=1, n=6)
    before = [k.clone() for k in c.keys]
    c.keep_positions(2, torch.tensor([0, 1]))  # an accepted chain: nothing to move
    assert c.length == 4 and all(torch.equal(a, b) for a, b in zip(before, c.keys))
    c.keep_positions(3, torch.tensor([], dtype=torch.long))  # nothing accepted
    assert c.length == 3
