"""Data-sharing strategy of paper 000 §4.1 (step 7: m = i * n, i = (acc_avg - acc_i)/(acc_avg - acc_min))."""
import numpy as np
import pytest

from federation.core.sharing import SharedPool, allocate_shared, client_rng, select_shared_indices


def test_allocation_hand_example_three_clients():
    # avg = 0.7, min = 0.5: a above, b at the average, c the worst (i = 1 -> whole shared set)
    assert allocate_shared({"a": 0.9, "b": 0.7, "c": 0.5}, 100, "part") == {"a": 0, "b": 0, "c": 100}


def test_allocation_hand_example_four_clients():
    # avg = 0.65, min = 0.5: b has i = 0.05/0.15 = 1/3 -> floor(33.3) = 33; d is the worst -> 100
    out = allocate_shared({"a": 0.8, "b": 0.6, "c": 0.7, "d": 0.5}, 100, "part")
    assert out == {"a": 0, "b": 33, "c": 0, "d": 100}


def test_worst_client_receives_whole_set_and_floor():
    out = allocate_shared({"a": 1.0, "b": 0.5, "c": 0.0}, 7, "part")  # avg .5, min 0
    assert out == {"a": 0, "b": 0, "c": 7}
    out = allocate_shared({"a": 0.9, "b": 0.8, "c": 0.1}, 10, "part")  # avg .6: b above
    assert out["c"] == 10 and out["a"] == out["b"] == 0
    out = allocate_shared({"a": 0.75, "b": 0.5, "c": 0.25, "d": 1.0}, 3, "part")  # avg .625, min .25
    assert out == {"a": 0, "b": 1, "c": 3, "d": 0}  # b: i = 1/3 -> floor(1.0) = 1


def test_all_equal_accuracies_give_zero():
    assert allocate_shared({"a": 0.6, "b": 0.6, "c": 0.6}, 50, "part") == {"a": 0, "b": 0, "c": 0}
    assert allocate_shared({"a": 0.6}, 50, "part") == {"a": 0}
    assert allocate_shared({}, 50, "part") == {}


def test_modes_none_and_all():
    accs = {"a": 0.9, "b": 0.1}
    assert allocate_shared(accs, 20, "none") == {"a": 0, "b": 0}
    assert allocate_shared(accs, 20, "all") == {"a": 20, "b": 20}
    with pytest.raises(ValueError):
        allocate_shared(accs, 20, "some")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        allocate_shared(accs, -1, "part")
    with pytest.raises(ValueError):
        allocate_shared({"a": float("nan"), "b": 0.2}, 5, "part")


def test_select_shared_indices_reproducible_and_nested():
    pool = np.arange(100, 130)
    a = select_shared_indices(pool, 10, client_rng(0, "c1"))
    b = select_shared_indices(pool, 10, client_rng(0, "c1"))
    big = select_shared_indices(pool, 20, client_rng(0, "c1"))
    other = select_shared_indices(pool, 10, client_rng(0, "c2"))
    assert np.array_equal(a, b) and len(a) == 10 and len(np.unique(a)) == 10
    assert set(a) <= set(big) <= set(pool.tolist())
    assert not np.array_equal(a, other)
    assert np.array_equal(select_shared_indices(pool, 99, 3), pool)
    assert len(select_shared_indices(pool, 0, 3)) == 0


def test_shared_pool_carve_disjoint_and_stratified():
    labels = np.repeat(np.arange(4), 50)
    pool, rest = SharedPool.carve(len(labels), 0.1, seed=1, labels=labels)
    assert len(pool) == 20 and len(rest) == 180
    assert not set(pool.indices) & set(rest)
    assert np.array_equal(np.sort(np.concatenate([pool.indices, rest])), np.arange(200))
    assert np.bincount(labels[pool.indices]).tolist() == [5, 5, 5, 5]
    pool2, _ = SharedPool.carve(len(labels), 0.1, seed=1, labels=labels)
    assert np.array_equal(pool.indices, pool2.indices)
    pool3, rest3 = SharedPool.carve(np.arange(10, 60), 0.2, seed=0)
    assert len(pool3) == 10 and set(pool3.indices) | set(rest3) == set(range(10, 60))
    with pytest.raises(ValueError):
        SharedPool.carve(10, 1.0)
    with pytest.raises(ValueError):
        pool.indices[0] = 3  # read-only


def test_pool_takes_whole_cases_when_the_data_has_cases():
    """Slice data: no case may have slices both in the shared pool and with a client (whose validation split
    takes whole cases), or the pool would send a client slices of its own validation volume."""
    cases = np.repeat([f"case{i}" for i in range(13)], np.arange(13) % 4 + 3)  # 13 volumes of 3-6 slices
    pool, rest = SharedPool.carve(len(cases), 0.2, seed=3, cases=cases)
    assert not set(cases[pool.indices]) & set(cases[rest])
    assert len(pool) >= round(0.2 * len(cases)) and len(pool) - round(0.2 * len(cases)) < 6  # one case at most over
    assert np.array_equal(np.sort(np.concatenate([pool.indices, rest])), np.arange(len(cases)))
    again, _ = SharedPool.carve(len(cases), 0.2, seed=3, cases=cases)
    assert np.array_equal(again.indices, pool.indices)
    none, everything = SharedPool.carve(len(cases), 0.0, seed=3, cases=cases)
    assert len(none) == 0 and len(everything) == len(cases)


def test_a_shared_fraction_that_rounds_to_an_empty_pool_is_warned_about():
    """Found by a review: stratified per class, 10 classes of 5 samples at fraction 0.1 each rounded to 0 and
    data sharing ran with an empty pool without a word."""
    import numpy as np
    import pytest

    from federation.core.sharing import SharedPool

    with pytest.warns(UserWarning, match="empty shared pool"):
        pool, rest = SharedPool.carve(50, 0.1, seed=0, labels=np.repeat(np.arange(10), 5))
    assert len(pool) == 0 and len(rest) == 50
