import numpy as np
import pytest
import torch
from data_helpers import make_split

from privatenet.data.base import Split
from privatenet.errors import PrivatenetError
from privatenet.models import create_adversary, create_model
from privatenet.models.taps import tap_shapes
from privatenet.regularizer import PrivacyRegularizer
from privatenet.train.config import TrainConfig
from privatenet.train.loop import Callbacks, extract, fit, fit_adversary

CFG = dict(epochs=3, batch_size=16, lr=1e-3, seed=7, device="cpu")


def _model(seed=0):
    torch.manual_seed(seed)
    return create_model("small_cnn", num_classes=3)


def _adversary(model, tap="pool", seed=1):
    torch.manual_seed(seed)
    shape = tap_shapes(model, image_size=32)[tap]
    return create_adversary("linear", tap_shape=shape, num_classes=2)


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _variants(model):
    """One regularizer of every mode, lam = 0."""
    shape = tap_shapes(model, image_size=32)["pool"]
    yield "fixed", PrivacyRegularizer(_adversary(model), loss="confusion", lam=0.0)
    yield "alternating", PrivacyRegularizer(_adversary(model), loss="adversarial", lam=0.0,
                                            update="alternating")
    yield "hsic", PrivacyRegularizer(None, loss="hsic", lam=0.0, num_classes=2)
    yield "ensemble", PrivacyRegularizer(None, loss="ensemble", lam=0.0, tap_shape=shape,
                                         num_classes=2, reinit_every=2)


def test_lambda_zero_reproduces_plain_training_bit_for_bit(tiny_split):
    plain = _model()
    h_plain = fit(model=plain, train=tiny_split, target="emotion", config=TrainConfig(**CFG))
    for name, reg in _variants(plain):
        private = _model()
        h_priv = fit(model=private, train=tiny_split, target="emotion",
                     config=TrainConfig(**CFG), regularizer=reg, tap="pool", private="gender")
        assert _same_state(plain, private), name
        assert [h["task_loss"] for h in h_plain] == [h["task_loss"] for h in h_priv]
        assert all(np.isfinite(h["priv_loss"]) for h in h_priv), name
        assert ("adv_loss" in h_priv[0]) == (name in ("alternating", "ensemble")), name


def test_fixed_adversary_is_never_updated_and_the_callers_copy_never_changes(tiny_split):
    model = _model()
    adversary = _adversary(model)
    before = {k: v.clone() for k, v in adversary.state_dict().items()}
    for update in ("fixed", "alternating"):
        fit(model=model, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
            regularizer=PrivacyRegularizer(adversary, loss="confusion", lam=0.5, update=update),
            tap="pool", private="gender")
        assert all(torch.equal(before[k], v) for k, v in adversary.state_dict().items())
        assert all(p.grad is None for p in adversary.parameters())


def test_confusion_training_makes_the_known_adversary_less_sure(tiny_split):
    from privatenet.losses import confusion_loss

    base = _model()
    adversary = _adversary(base)
    fit_adversary(adversary, extract(base, tiny_split.images, tap="pool"),
                  tiny_split.labels["gender"], epochs=30, batch_size=16, lr=1e-2, device="cpu")
    after = {}
    for lam in (0.0, 0.9):
        model = _model()
        model.load_state_dict(base.state_dict())
        fit(model=model, train=tiny_split, target="emotion",
            config=TrainConfig(**{**CFG, "epochs": 4, "lr": 3e-3}),
            regularizer=PrivacyRegularizer(adversary, loss="confusion", lam=lam), tap="pool",
            private="gender")
        feats = extract(model, tiny_split.images, tap="pool")
        after[lam] = confusion_loss(adversary.eval()(feats)).item()
    assert after[0.9] < 0.5 * after[0.0]


def test_kill_and_resume_equals_uninterrupted_run(tiny_split, tmp_path):
    full = _model()
    h_full = fit(model=full, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
                 run_dir=tmp_path / "full")

    class Killed(Exception):
        pass

    def kill_after_first(record):
        if record["epoch"] == 1:
            raise Killed

    part = _model()
    with pytest.raises(Killed):
        fit(model=part, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
            run_dir=tmp_path / "part", callbacks=Callbacks(on_epoch=kill_after_first))
    with pytest.raises(PrivatenetError, match="pass resume=True to continue"):
        fit(model=_model(), train=tiny_split, target="emotion", config=TrainConfig(**CFG),
            run_dir=tmp_path / "part")
    resumed = _model(seed=123)  # other initial weights: everything must come from the checkpoint
    h_res = fit(model=resumed, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
                run_dir=tmp_path / "part", resume=True)
    assert _same_state(full, resumed)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in h_full]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in h_res]
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == CFG["epochs"]


def test_resume_with_other_settings_is_refused(tiny_split, tmp_path):
    fit(model=_model(), train=tiny_split, target="emotion",
        config=TrainConfig(**{**CFG, "epochs": 1}), run_dir=tmp_path)
    with pytest.raises(PrivatenetError, match="other settings"):
        fit(model=_model(), train=tiny_split, target="emotion",
            config=TrainConfig(**{**CFG, "lr": 0.1}), run_dir=tmp_path, resume=True)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=1), dict(lr=-1.0),
                                 dict(lr_decay=0.0), dict(device="tpu"),
                                 dict(precision="fp16"), dict(memory_format="nhwc"),
                                 dict(compile="yes")])
def test_train_config_is_checked(bad):
    with pytest.raises(PrivatenetError, match=repr(next(iter(bad.values())))):
        TrainConfig(**{**CFG, **bad})


def test_privacy_settings_are_checked(tiny_split):
    model = _model()
    with pytest.raises(PrivatenetError, match="outside"):
        PrivacyRegularizer(_adversary(model), loss="confusion", lam=1.5)
    with pytest.raises(PrivatenetError, match="unknown privacy loss"):
        PrivacyRegularizer(_adversary(model), loss="mutual_information")
    with pytest.raises(PrivatenetError, match="no tap"):
        fit(model=model, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
            regularizer=PrivacyRegularizer(_adversary(model)), tap="arm", private="gender")
    with pytest.raises(PrivatenetError, match="needs private"):
        fit(model=model, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
            regularizer=PrivacyRegularizer(_adversary(model)), tap="pool")
    with pytest.raises(PrivatenetError, match="unknown training setting 'epoch'"):
        fit(model=model, train=tiny_split, target="emotion", epoch=3)


def _kill_after_first(record):
    if record["epoch"] == 1:
        raise _Killed


class _Killed(Exception):
    pass


def _resume_matches(tiny_split, tmp_path, make_privacy):
    """Train 3 epochs uninterrupted and killed after one then resumed; compare everything."""
    runs = {}
    for name in ("full", "part"):
        model = _model()
        regs, taps, attrs = make_privacy(model)
        kw = dict(model=model, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
                  regularizer=regs, tap=taps, private=attrs, run_dir=tmp_path / name)
        if name == "part":
            with pytest.raises(_Killed):
                fit(**kw, callbacks=Callbacks(on_epoch=_kill_after_first))
            model = _model(seed=123)  # everything must come from the checkpoint
            regs, taps, attrs = make_privacy(model)
            kw.update(model=model, regularizer=regs)
            history = fit(**kw, resume=True)
        else:
            history = fit(**kw)
        runs[name] = (model, regs, [{k: v for k, v in h.items() if k != "seconds"}
                                    for h in history])
    (full, full_regs, h_full), (part, part_regs, h_part) = runs["full"], runs["part"]
    assert _same_state(full, part)
    assert h_full == h_part
    many = isinstance(full_regs, list)
    for a, b in zip(full_regs if many else [full_regs], part_regs if many else [part_regs],
                    strict=True):
        assert _same_state(a, b)  # adversaries, ensemble members and step counters
    return h_full


def test_ensemble_fit_resumes_exactly_across_re_initialisations(tiny_split, tmp_path):
    def privacy(model):
        shape = tap_shapes(model, image_size=32)["pool"]
        reg = PrivacyRegularizer(None, loss="ensemble", lam=0.5, tap_shape=shape,
                                 num_classes=2, reinit_every=2, members=["linear", "mlp"])
        return reg, "pool", "gender"

    history = _resume_matches(tiny_split, tmp_path, privacy)
    assert {"priv_loss", "adv_loss"} <= set(history[0])


def _two_attributes(split):
    g = torch.Generator().manual_seed(3)
    age = torch.randint(0, 3, (len(split),), generator=g)
    age[::5] = -1  # unknown for some rows: they get no age term
    return Split(split.images, {**split.labels, "age": age}, split.ids)


def test_two_private_attributes_fit_log_and_resume(tiny_split, tmp_path):
    split = _two_attributes(tiny_split)

    def privacy(model):
        shape = tap_shapes(model, image_size=32)["backbone"]
        gender = PrivacyRegularizer(None, loss="ensemble", lam=0.5, tap_shape=shape,
                                    num_classes=2, reinit_every=4, members=["linear"])
        torch.manual_seed(2)
        known = create_adversary("linear", tap_shape=tap_shapes(model, image_size=32)["pool"],
                                 num_classes=3)
        age = PrivacyRegularizer(known, loss="confusion", lam=0.5, update="alternating")
        return [gender, age], ["backbone", "pool"], ["gender", "age"]

    history = _resume_matches(split, tmp_path, privacy)
    assert {"priv_loss", "priv_loss/gender", "priv_loss/age", "adv_loss", "adv_loss/gender",
            "adv_loss/age"} <= set(history[0])
    for h in history:
        assert h["priv_loss"] == pytest.approx((h["priv_loss/gender"] + h["priv_loss/age"]) / 2,
                                               rel=1e-6)
    # the checkpoint signature holds each term's settings
    from privatenet.storage import load_training_checkpoint

    _, meta = load_training_checkpoint(tmp_path / "full")
    assert [p["attribute"] for p in meta["signature"]["privacy"]] == ["gender", "age"]
    assert meta["signature"]["privacy"][0]["loss"] == "ensemble"


def test_several_attributes_are_checked(tiny_split):
    split = _two_attributes(tiny_split)
    model = _model()
    shape = tap_shapes(model, image_size=32)["pool"]

    def reg(lam=0.5, k=2):
        return PrivacyRegularizer(None, loss="hsic", lam=lam, num_classes=k)

    kw = dict(model=model, train=split, target="emotion", config=TrainConfig(**CFG))
    with pytest.raises(PrivatenetError, match="lists of one length"):
        fit(**kw, regularizer=[reg(), reg(k=3)], tap=["pool"], private=["gender", "age"])
    with pytest.raises(PrivatenetError, match="lists of one length"):
        fit(**kw, regularizer=[reg(), reg(k=3)], tap="pool", private=["gender", "age"])
    with pytest.raises(PrivatenetError, match="same lam.*gender=0.5, age=0.3"):
        fit(**kw, regularizer=[reg(), reg(lam=0.3, k=3)], tap=["pool", "pool"],
            private=["gender", "age"])
    with pytest.raises(PrivatenetError, match="'gender' is given twice"):
        fit(**kw, regularizer=[reg(), reg()], tap=["pool", "backbone"],
            private=["gender", "gender"])
    same = PrivacyRegularizer(None, loss="ensemble", tap_shape=shape, num_classes=3)
    with pytest.raises(PrivatenetError, match="same regularizer"):
        fit(**kw, regularizer=[same, same], tap=["pool", "pool"], private=["age", "emotion"])
    with pytest.raises(PrivatenetError, match="no label column 'race'"):
        fit(**kw, regularizer=[reg(), reg()], tap=["pool", "pool"], private=["gender", "race"])
    with pytest.raises(PrivatenetError, match="no tap"):
        fit(**kw, regularizer=[reg(), reg()], tap=["pool", "arm"], private=["gender", "age"])


# ---------------------------------------------------------------- the fast path (issue 10)

def _test_accuracy(model, split):
    logits = extract(model, split.images)
    return float((logits.argmax(1) == split.labels["emotion"]).float().mean())


def test_bf16_and_fp32_training_reach_the_same_accuracy():
    train, test = make_split(n=144, seed=0), make_split(n=96, seed=1)
    accuracy = {}
    for precision in ("fp32", "bf16"):
        model = _model()
        fit(model=model, train=train, target="emotion", precision=precision, **CFG)
        accuracy[precision] = _test_accuracy(model, test)
    assert accuracy["fp32"] > 0.8  # chance is 1/3: both learned the task...
    assert abs(accuracy["bf16"] - accuracy["fp32"]) <= 0.1  # ...equally well, within noise


def test_channels_last_training_matches_contiguous_and_returns_a_contiguous_model(tiny_split):
    plain, fast = _model(), _model()
    fit(model=plain, train=tiny_split, target="emotion", **CFG)
    fit(model=fast, train=tiny_split, target="emotion", memory_format="channels_last", **CFG)
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-4), name  # rounding only
    assert all(p.is_contiguous() for p in fast.parameters())


def test_speed_settings_at_their_defaults_keep_a_runs_identity():
    from dataclasses import asdict

    old = {k: v for k, v in asdict(TrainConfig()).items()
           if k not in ("precision", "memory_format", "compile")}
    assert TrainConfig().key() == old  # runs and cached stages from before stay valid
    assert TrainConfig(precision="bf16").key()["precision"] == "bf16"
    assert TrainConfig(compile=True).key()["compile"] is True


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_split):
    eager, compiled = _model(), _model()
    a = fit(model=eager, train=tiny_split, target="emotion", **CFG)
    b = fit(model=compiled, train=tiny_split, target="emotion", compile=True, **CFG)
    assert abs(a[-1]["loss"] - b[-1]["loss"]) < 1e-3
    for (name, x), y in zip(eager.state_dict().items(), compiled.state_dict().values(),
                            strict=True):  # the model's own keys, not the compiled wrapper's
        assert torch.allclose(x.float(), y.float(), atol=1e-4), name


def test_extract_runs_in_the_precision_it_is_given_and_the_jobs_give_the_runs(
        tiny_split, tmp_path, monkeypatch, make_manifest):
    from privatenet.app import jobs
    from privatenet.data import load_dataset

    torch.manual_seed(0)
    net = create_model("small_cnn", num_classes=3)
    images = tiny_split.images[:8]
    fp32 = extract(net, images, precision="fp32")
    assert torch.equal(extract(net, images), fp32)  # auto is fp32 on a CPU
    assert not torch.equal(extract(net, images, precision="bf16"), fp32)  # bf16 autocast ran
    # the jobs evaluate in the run's precision, not in extract's default
    seen = []
    real = jobs.extract
    monkeypatch.setattr(jobs, "extract", lambda *a, **kw: seen.append(kw["precision"])
                        or real(*a, **kw))
    csv = make_manifest(tmp_path / "data", n_train=24, n_test=12)
    config = TrainConfig(epochs=1, batch_size=8, device="cpu", precision="fp32")
    jobs.train_job(data=load_dataset(f"manifest:{csv}"), out=tmp_path / "run",
                   model="small_cnn", target="emotion", config=config)
    assert seen and set(seen) == {"fp32"}
