"""A labelled-data budget (``data.train_cases``) and the teacher's own data (``distill.teacher.data``):
the distillation regime where the teacher saw more labelled cases than its student (issue 13)."""
import pytest

from datamodules.errors import DataError
from datamodules.segmentation import VolumeSegmentationDataModule
from engine.builders import ConfigError
from engine.distill import teacher_data, teacher_key
from tests.hydra_helpers import compose_run

CASES = [f"case_{i:05d}" for i in range(20)]


def test_train_cases_keeps_a_seeded_subset_and_the_same_val_test(tmp_path):
    full = VolumeSegmentationDataModule(str(tmp_path), seed=3).make_splits(CASES)
    few = VolumeSegmentationDataModule(str(tmp_path), seed=3, train_cases=4).make_splits(CASES)
    assert few["val"] == full["val"] and few["test"] == full["test"]
    assert len(few["train"]) == 4 and set(few["train"]) < set(full["train"])
    again = VolumeSegmentationDataModule(str(tmp_path), seed=3, train_cases=4).make_splits(CASES)
    assert again == few
    with pytest.raises(DataError, match=r"data.train_cases=50 but the split has only 12 training cases"):
        VolumeSegmentationDataModule(str(tmp_path), seed=3, train_cases=50).make_splits(CASES)
    with pytest.raises(DataError, match="data.train_cases=0"):
        VolumeSegmentationDataModule(str(tmp_path), train_cases=0)


def test_teacher_trains_on_its_own_data_budget(tmp_path):
    base = ["+exp=kits_hlfd", "logger=csv"]
    student_budget = compose_run([*base, "data.train_cases=2", "distill.teacher.data={train_cases:null}"], tmp_path)
    plain = compose_run(base, tmp_path)
    assert student_budget.data.train_cases == 2 and teacher_data(student_budget).train_cases is None
    assert teacher_key(student_budget) == teacher_key(plain)       # one cached teacher for both students
    assert teacher_data(plain) is plain.data
    # a review: keys off the old refused list (case_pattern, case_shard, layout, target) changed the split or task
    for key in ("test_fraction:0.5", "case_shard:[0,2]", "layout:lits", "target:organ"):
        bad = compose_run([*base, f"distill.teacher.data={{{key}}}"], tmp_path)
        with pytest.raises(ConfigError, match=rf"distill.teacher.data may set only train_cases.* not {key.split(':')[0]}"):
            teacher_data(bad)


def test_teacher_cache_key_follows_what_trains_the_teacher(tmp_path):
    """Found by an audit: the key held only net, loss, data, seed and length, so a teacher trained with
    another learning rate, precision, clipping or validation budget was reused without a word."""
    base = ["+exp=lits_hlfd", "logger=csv"]
    key = teacher_key(compose_run(base, tmp_path))
    for extra in (["module.optimizer.lr=0.5"], ["++trainer.gradient_clip_val=0.01"], ["trainer.precision=bf16-mixed"],
                  ["module.loss.base.gamma=0.0"],  # a review: the teacher's L_seg (module.loss) was not in the key
                  ["trainer.limit_val_batches=2"], ["callbacks.model_checkpoint.monitor=val/loss"]):
        assert teacher_key(compose_run([*base, *extra], tmp_path)) != key, extra
    for cosmetic in (["trainer.log_every_n_steps=1"], ["trainer.num_sanity_val_steps=2"]):
        assert teacher_key(compose_run([*base, *cosmetic], tmp_path)) == key, cosmetic


def test_3d_patches_keep_the_training_budget(tmp_path):
    """Found by a review: the 3D patch datamodule split with ``patient_split`` itself, so ``data.train_cases``
    (and ``data.split_file``) were ignored there and a 3D student trained on every case, while its CT
    statistics came from the budget's subset."""
    from engine.builders import build_datamodule
    from tests.volumetric_helpers import TINY_3D

    few, full = (build_datamodule(compose_run([*TINY_3D, "data.synthetic.n_cases=8", f"data.train_cases={n}"],
                                              tmp_path / str(n)).data) for n in (2, "null"))
    few.setup()
    full.setup()
    assert len(few.splits["train"]) == 2 and set(few.splits["train"]) < set(full.splits["train"])
    assert few.splits["val"] == full.splits["val"] and few.splits["test"] == full.splits["test"]
    assert sorted(c.case_id for c in few.train_dataset.cases) == sorted(few.splits["train"])


def test_a_preprocessing_fix_retires_cached_teachers(tmp_path, monkeypatch):
    """A review: the slice cache's format number changed with the masks' resizing fix, but the teacher cache key
    did not, so a teacher trained on the shifted masks was still reused."""
    import datamodules.volume_cache as volume_cache
    import engine.distill as distill

    cfg = compose_run(["+exp=kits_hlfd", "logger=csv"], tmp_path)
    before = distill.teacher_key(cfg)
    monkeypatch.setattr(distill, "CACHE_FORMAT", volume_cache.CACHE_FORMAT + 1)
    assert distill.teacher_key(cfg) != before and before["data_format"] == volume_cache.CACHE_FORMAT


def test_a_teacher_of_its_own_length_is_one_teacher_whatever_the_students_length(tmp_path):
    """A review: the key resolved the scheduler's ``T_max: ${trainer.max_epochs}`` against the student's epochs,
    though the teacher trains (and anneals) over ``distill.teacher.max_epochs``: another student length retrained
    the same teacher."""
    base = ["+exp=lits_hlfd", "logger=csv", "distill.teacher.max_epochs=6"]
    keys = [teacher_key(compose_run([*base, f"trainer.max_epochs={n}"], tmp_path)) for n in (3, 9)]
    assert keys[0] == keys[1] and keys[0]["module"]["scheduler"]["T_max"] == 6
    assert teacher_key(compose_run([*base[:2], "distill.teacher.max_epochs=7"], tmp_path)) != keys[0]
