"""Partitioners (paper 000 §5.1), feature skew, partial labels (SegViz, paper 004) and reports."""
import os

import numpy as np
import pytest
import torch

from federation.core.partition import (
    FeatureShift, by_group, dirichlet, feature_skew_params, iid, label_mask, mask_unannotated,
    partial_label_sets, partition_report, pathological, quantity_skew,
)
from federation.partition_files import plot_partition

LABELS = np.repeat(np.arange(10), 100)  # 10 classes x 100 samples


def _check_cover(parts, expected):
    allidx = np.concatenate(parts)
    assert len(allidx) == len(np.unique(allidx)), "overlap"
    assert np.array_equal(np.sort(allidx), np.sort(np.asarray(expected)))
    assert all(p.dtype == np.int64 for p in parts)


PARTITIONERS = {
    "iid": lambda seed, idx=None: iid(len(LABELS) if idx is None else idx, 7, seed),
    "quantity": lambda seed, idx=None: quantity_skew(len(LABELS) if idx is None else idx, 5, seed, alpha=1.0),
    "dirichlet": lambda seed, idx=None: dirichlet(LABELS, 6, 0.5, seed, min_size=5, indices=idx),
    "pathological": lambda seed, idx=None: pathological(LABELS, 10, 2, seed=seed, indices=idx),
}


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_cover_without_overlap_and_reproducible(name):
    fn = PARTITIONERS[name]
    a, b, c = fn(0), fn(0), fn(1)
    _check_cover(a, np.arange(len(LABELS)))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    subset = np.setdiff1d(np.arange(len(LABELS)), np.arange(0, 1000, 9))  # e.g. after carving a shared pool
    _check_cover(fn(0, subset), subset)


@pytest.mark.parametrize("k,clients", [(1, 10), (2, 10), (2, 4), (1, 30), (2, 5)])
def test_pathological_80_20(k, clients):
    parts = pathological(LABELS, clients, k, major_fraction=0.8, seed=3)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    for p in parts:
        counts = np.sort(np.bincount(LABELS[p], minlength=10))[::-1]
        assert abs(counts[:k].sum() / len(p) - 0.8) <= max(0.02, 1.5 / len(p))  # ±1 sample of rounding
        assert counts[k] < counts[k - 1] / 2  # the rest is spread, not another major class


def test_pathological_infeasible_warns_and_still_covers():
    with pytest.warns(UserWarning, match="major demand"):
        parts = pathological(LABELS, 7, 1, seed=0)  # 143 per client, 114 > 100 samples of a class
    _check_cover(parts, np.arange(len(LABELS)))
    with pytest.raises(ValueError):
        pathological(LABELS, 4, 10)


def test_dirichlet_small_alpha_more_skewed():
    _, skewed = partition_report(LABELS, dirichlet(LABELS, 5, 0.05, seed=0))
    _, mild = partition_report(LABELS, dirichlet(LABELS, 5, 100.0, seed=0))
    assert skewed["mean_emd"] > mild["mean_emd"] + 0.5
    assert min(len(p) for p in dirichlet(LABELS, 5, 0.05, seed=0, min_size=20)) >= 20


def test_quantity_skew_sizes():
    parts = quantity_skew(100, 3, seed=0, sizes=[50, 30, 20])
    assert [len(p) for p in parts] == [50, 30, 20]
    parts = quantity_skew(100, 4, seed=0, sizes=[0.4, 0.3, 0.2, 0.1])
    assert [len(p) for p in parts] == [40, 30, 20, 10]
    # sizes that do not divide exactly: largest remainder (2.6, 7.4 -> floors 2, 7; the one left goes to .6)
    assert [len(p) for p in quantity_skew(10, 2, seed=0, sizes=[0.26, 0.74])] == [3, 7]
    assert [len(p) for p in quantity_skew(10, 2, seed=0, sizes=[0.74, 0.26])] == [7, 3]
    sizes = [len(p) for p in quantity_skew(1000, 5, seed=1, alpha=0.5)]
    assert sum(sizes) == 1000 and max(sizes) > 1.5 * min(sizes)


def test_quantity_skew_refuses_sizes_that_fit_neither_reading():
    """A review: counts summing to another n were silently rescaled ([10, 20, 30, 40, 50] of 1000 gave 67..333)."""
    with pytest.raises(ValueError, match=r"sum to 150, not the 1000 samples"):
        quantity_skew(1000, 5, seed=0, sizes=[10, 20, 30, 40, 50])
    with pytest.raises(ValueError, match=r"sum to 0.9: give fractions that sum to 1"):
        quantity_skew(100, 3, seed=0, sizes=[0.5, 0.3, 0.1])
    assert [len(p) for p in quantity_skew(10, 2, seed=0, sizes=[1, 0])] == [10, 0]   # fractions (sum 1)
    assert [len(p) for p in quantity_skew(30, 3, seed=0, sizes=[0.333, 0.333, 0.333])] == [10, 10, 10]  # typed thirds


def test_by_group():
    groups = np.array(["b", "a", "b", "c", "a"])
    parts = by_group(groups)
    assert [p.tolist() for p in parts] == [[1, 4], [0, 2], [3]]
    assert [p.tolist() for p in by_group(groups, indices=np.array([0, 1, 3]))] == [[1], [0], [3]]


def test_feature_shift_deterministic_per_site():
    img = torch.rand(1, 8, 8)
    shifts = feature_skew_params(3, seed=0, strength=1.0)
    a0, a1 = shifts[0](img), shifts[0](img)
    assert torch.equal(a0, a1) and a0.shape == img.shape and a0.dtype == img.dtype
    assert not torch.allclose(a0, shifts[1](img))
    assert shifts == feature_skew_params(3, seed=0, strength=1.0)
    ident = feature_skew_params(2, seed=0, strength=0.0)[0]
    assert torch.allclose(ident(img), img, atol=1e-6)
    fs = FeatureShift(intensity_offset=1.0, intensity_scale=2.0)
    assert torch.allclose(fs(img), img * 2 + 1)
    g = FeatureShift(contrast_gamma=2.0)(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(g, torch.tensor([0.0, 0.25, 1.0]))
    # gamma on the image's own [min, max] range (lo=-1, span=2): ((x - lo) / span) ** 2 * span + lo; an input whose
    # range is not [0, 1] tells a dropped "+ lo" ([0, .5, 2]) or "* span" and "/ span" swapped ([-1, -.5, -.5])
    g = FeatureShift(contrast_gamma=2.0)(torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(g, torch.tensor([-1.0, -0.5, 1.0]))
    g = FeatureShift(contrast_gamma=2.0)(torch.tensor([1.0, 3.0, 5.0]))   # lo=1, span=4: [0, .5, 1] -> [0, .25, 1]
    assert torch.allclose(g, torch.tensor([1.0, 2.0, 5.0]))


def test_partial_label_sets():
    sets = partial_label_sets(5, 2, seed=0)
    assert set(sets) == {"0", "1"} and all(0 in s for s in sets.values())
    assert set().union(*sets.values()) == set(range(5))  # every class annotated somewhere
    assert sets == partial_label_sets(5, 2, seed=0)
    spec = partial_label_sets(4, ["A", "B"], spec={"A": [1], "B": [2, 3]})
    assert spec == {"A": frozenset({0, 1}), "B": frozenset({0, 2, 3})}
    assert all(len(s) >= 4 for s in partial_label_sets(6, 3, seed=1, per_client=3).values())
    with pytest.raises(ValueError):
        partial_label_sets(3, ["A"], spec={"A": [5]})
    # one reading of an explicit spec with federation.partial_labels: a client not named annotates every
    # class (it once raised here and was fully labelled there), a name that is no client is refused in both
    assert partial_label_sets(3, ["A", "B"], spec={"A": [1]}) == {"A": frozenset({0, 1}), "B": frozenset({0, 1, 2})}
    with pytest.raises(ValueError, match="names 'C', which is no client"):
        partial_label_sets(3, ["A", "B"], spec={"C": [1]})
    with pytest.raises(ValueError, match="whole numbers"):
        partial_label_sets(3, ["A"], spec={"A": [1.7]})


def test_mask_unannotated_is_ignore_not_background():
    target = torch.tensor([[0, 1, 2], [3, 255, 1]])
    out = mask_unannotated(target, {1}, ignore_index=255)
    assert out.tolist() == [[0, 1, 255], [255, 255, 1]]
    assert mask_unannotated(target.numpy(), {1, 3}).tolist() == [[0, 1, 255], [3, 255, 1]]
    assert label_mask({0, 2}, 4).tolist() == [True, False, True, False]


def test_report_and_plot(tmp_path):
    parts = pathological(LABELS, 10, 1, seed=0)
    md, stats = partition_report(LABELS, parts, [f"c{i}" for i in range(10)])
    assert md.splitlines()[0].startswith("| client | n | c0") and len(md.splitlines()) == 12
    assert stats["sizes"] == [100] * 10 and len(stats["emd"]) == 10
    assert all(abs(f - 0.8) <= 0.02 for f in stats["max_class_fraction"])
    out = plot_partition(LABELS, parts, tmp_path / "partition.png")
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["partition.png"]


def test_slice_data_is_partitioned_by_whole_volume(caplog):
    """On slice data a partitioner deals out whole volumes by default (``federation.partition_unit=case``: a
    hospital holds whole patients), label skew by each volume's most frequent label; ``partition_unit=sample``
    deals out slices and is warned about, by_site never is. Found by an audit: iid put one volume's slices at
    several clients."""
    import logging

    from omegaconf import OmegaConf

    from federation.plan import split_clients

    cases = np.repeat([f"v{i}" for i in range(6)], 5)  # 6 volumes of 5 slices
    targets = np.repeat([0, 0, 1, 1, 2, 2], 5)
    targets[[0, 10, 20]] = 9  # one odd slice in some volumes: the volume's label is its most frequent one
    # slice data has no classification targets: its labels are a per-item summary (``targets`` now marks
    # classification data, whose image groups are no sites)
    train = type("Slices", (), {"label_summary": targets, "case_ids": cases, "__len__": lambda self: len(cases)})()
    runs = [("federation.core.partition.iid", {}, "case", False), ("federation.core.partition.iid", {}, "sample", True),
            ("federation.core.partition.pathological", {"k": 1, "major_fraction": 1.0}, "case", False),
            ("federation.core.partition.by_group", {}, "sample", False)]
    for target, kw, unit, warned in runs:
        fed = OmegaConf.create({"partition": {"_target_": target, **kw}, "partition_unit": unit,
                                "num_clients": None if "by_group" in target else 3, "client_val_fraction": 0.2})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="federation.plan"):
            split = split_clients(fed, train, None, seed=0)
        assert any("more than one client" in r.message for r in caplog.records) == warned, (target, unit)
        assert np.array_equal(np.sort(np.concatenate(split.parts)), np.arange(len(cases)))
        owners = [{c for c in cases[p]} for p in split.parts]
        if unit == "case" or "by_group" in target:
            assert sum(len(o) for o in owners) == 6, (target, owners)  # every volume at exactly one client
        if "pathological" in target:  # k=1, all major: each client holds the two volumes of one label
            assert sorted(sorted(o) for o in owners) == [["v0", "v1"], ["v2", "v3"], ["v4", "v5"]]
    fed = OmegaConf.create({"partition": {"_target_": "federation.core.partition.iid"}, "num_clients": 7,
                            "client_val_fraction": 0.2})
    with pytest.raises(Exception, match="more than the 6 whole volumes"):
        split_clients(fed, train, None, seed=0)


def test_empty_clients_and_single_volume_clients(caplog):
    """A partition that leaves a client without data is one line before any round (it used to be accepted
    and the client dropped from every round); a client holding one volume gets a warning that its validation
    slices come from its training volume. Both found by an audit."""
    import logging

    from omegaconf import OmegaConf

    from federation.errors import FederationError
    from federation.plan import split_clients

    cases = np.repeat([f"v{i}" for i in range(6)], 5)
    train = type("Slices", (), {"targets": np.zeros(30, np.int64), "case_ids": cases, "__len__": lambda self: 30})()
    fed = OmegaConf.create({"partition": {"_target_": "federation.core.partition.quantity_skew", "sizes": [0.95, 0.05, 0.0]},
                            "num_clients": 3, "client_val_fraction": 0.2})
    with pytest.raises(FederationError, match="leaves client.s. 1, 2 without any data"):
        split_clients(fed, train, None, seed=0)
    for n, warned in ((6, True), (3, False)):
        fed = OmegaConf.create({"partition": {"_target_": "federation.core.partition.iid"}, "num_clients": n,
                                "client_val_fraction": 0.2})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="federation.plan"):
            split_clients(fed, train, None, seed=0)
        assert any("hold a single volume" in r.message for r in caplog.records) == warned, n


def test_partial_labels_name_clients_and_classes_that_exist():
    """Found by a review: ``federation.partial_labels`` keys that were no client id (``{0: [1]}`` for the client
    ``"0"``, or a typo) and classes outside the data's were silently ignored, so those clients trained fully
    labelled. Integer keys now name the client ``"0"``; anything else is one line."""
    from omegaconf import OmegaConf

    from federation.errors import FederationError
    from federation.plan import split_clients

    cases = np.repeat([f"v{i}" for i in range(6)], 5)
    train = type("Slices", (), {"targets": np.zeros(30, np.int64), "case_ids": cases, "__len__": lambda self: 30})()

    def fed(partial):
        return OmegaConf.create({"partition": {"_target_": "federation.core.partition.iid"}, "num_clients": 2,
                                 "client_val_fraction": 0.2, "partial_labels": partial})

    split = split_clients(fed({0: [1], 1: [2]}), train, None, seed=0, num_classes=3)
    assert {c: i.annotated for c, i in split.indices.items()} == {"0": [1], "1": [2]}
    for partial, culprit in (({"0": [1], "l": [2]}, "names 'l', which is no client"),
                             ({"0": [3]}, r"partial_labels.0 names class 3, outside the data's 3 classes"),
                             ({"0": "1"}, "must be a list of class ids"),
                             ({"0": [1.7]}, "must be a list of class ids"), ({"0": [True]}, "must be a list of class ids")):
        with pytest.raises(FederationError, match=culprit):
            split_clients(fed(partial), train, None, seed=0, num_classes=3)


def test_a_real_sites_node_takes_its_own_partial_labels():
    """A Flower node on its own folder (``partition=all``) took no annotation from the config (every class
    trained); it now takes its own entry, the same ``federation.partial_labels`` the simulation uses."""
    from omegaconf import OmegaConf

    from federation.transports.flower.partition import site_indices

    base = type("DM", (), {"num_classes": 3, "train_dataset": list(range(10))})()
    cfg = OmegaConf.create({"seed": 0, "federation": {"client_val_fraction": 0.2,
                                                      "partial_labels": {"hospital_a": [2], "hospital_b": [1]}}})
    assert site_indices(cfg, base, "hospital_a", "all").annotated == [2]
    assert site_indices(cfg, base, "hospital_c", "all").annotated is None


def test_slice_labels_for_partitioning_come_from_the_stored_masks_not_the_augmentation():
    """Found by a review: slice labels were read through the training augmentation (a rotation can drop a
    small lesion), so one seed gave different partitions, and the report could describe another partition
    than the one used. They now come from the stored masks, the same at every call."""
    from datamodules.slices import SliceCase, SliceDataset, TargetMap
    from datamodules.subset import sample_labels

    labels = np.zeros((4, 8, 8), np.uint8)
    labels[1, 0, 0], labels[2, 3:5, 3:5], labels[3, 2, 2] = 2, 1, 255  # a one-pixel lesion at the border
    case = SliceCase("c", np.zeros((4, 8, 8), np.float32), labels, [0, 1, 2, 3], [0, 1, 2, 3])
    draws = iter(range(1000))

    def augment(image, mask):  # drops the mask on every other read, as a rotation may drop a lesion
        return image, mask * (next(draws) % 2)

    dataset = SliceDataset([case], [(0, k) for k in range(4)], TargetMap("multiclass"), augment)
    assert sample_labels(dataset).tolist() == [0, 2, 1, 0] == sample_labels(dataset).tolist()


def test_multi_label_samples_without_a_finding_are_their_own_partition_label(tmp_path):
    """Found by a review: multi-label rows were reduced with ``argmax``, so a sample with no positive label
    (ChestMNIST's majority) was partitioned and reported as label 0. It is now its own bucket, ``L``, named
    "no finding" in the partition report."""
    from datamodules.subset import sample_labels
    from federation.partition_files import write_partition_report

    class MultiLabel:
        targets = np.array([[0, 0, 0], [0, 1, 1], [1, 0, 0], [0, 0, 0], [0, 0, 1]], np.float32)

    labels = sample_labels(MultiLabel())
    assert labels.tolist() == [3, 1, 0, 3, 2]
    parts = [np.array([0, 1, 2]), np.array([3, 4])]
    write_partition_report(tmp_path, labels, parts, ["a", "b"], None, "federation.core.partition.iid",
                           ["atelectasis", "cardiomegaly", "effusion"], multi_label=True)
    report = (tmp_path / "partition.md").read_text()
    assert "no finding" in report and "atelectasis" in report, report
    write_partition_report(tmp_path, labels, parts, ["a", "b"], None, "federation.core.partition.iid",
                           ["background", "liver", "spleen"])  # not multi-label: no class is invented
    assert "no finding" not in (tmp_path / "partition.md").read_text()


def test_pathological_with_uneven_classes_covers_every_sample_once():
    """A review: with a short class pool the spread's rounding gave a client more than it needed, and the
    fallback then asked NumPy for a negative draw ("nsample must be nonnegative") at about a third of the seeds."""
    import warnings

    from federation.core.partition import pathological

    for counts, clients in (([72, 66, 61, 79], 3), ([115, 99, 54, 20], 7)):
        labels = np.repeat(np.arange(len(counts)), counts)
        for seed in range(40):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "clients get fewer than 80 %": the short pool, said
                parts = pathological(labels, clients, 2, seed=seed)
            every = np.concatenate(parts)
            assert sorted(every.tolist()) == list(range(len(labels))) and all(len(p) for p in parts), (counts, seed)
