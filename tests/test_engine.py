import pytest
import torch

from privatenet.errors import PrivatenetError
from privatenet.models import create_adversary, create_model
from privatenet.models.taps import tap_shapes
from privatenet.train.config import TrainConfig
from privatenet.train.loop import Callbacks, Privacy, extract, fit, fit_adversary

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


def test_lambda_zero_reproduces_plain_training_bit_for_bit(tiny_split):
    plain = _model()
    h_plain = fit(model=plain, train=tiny_split, target="emotion", config=TrainConfig(**CFG))
    for update in ("fixed", "alternating"):
        private = _model()
        h_priv = fit(model=private, train=tiny_split, target="emotion",
                     config=TrainConfig(**CFG),
                     privacy=Privacy(loss="confusion", tap="pool", attribute="gender", lam=0.0,
                                     adversary=_adversary(private), update=update))
        assert _same_state(plain, private), update
        assert [h["task_loss"] for h in h_plain] == [h["task_loss"] for h in h_priv]


def test_fixed_adversary_is_never_updated_and_the_callers_copy_never_changes(tiny_split):
    model = _model()
    adversary = _adversary(model)
    before = {k: v.clone() for k, v in adversary.state_dict().items()}
    for update in ("fixed", "alternating"):
        fit(model=model, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
            privacy=Privacy(loss="confusion", tap="pool", attribute="gender", lam=0.5,
                            adversary=adversary, update=update))
        assert all(torch.equal(before[k], v) for k, v in adversary.state_dict().items())
        assert all(p.grad is None for p in adversary.parameters())


def test_confusion_training_makes_the_known_adversary_less_sure(tiny_split):
    from privatenet.losses import confusion_loss

    base = _model()
    adversary = _adversary(base)
    fit_adversary(head=adversary, features=extract(base, tiny_split.images, tap="pool"),
                  labels=tiny_split.labels["gender"],
                  config=TrainConfig(epochs=30, batch_size=16, lr=1e-2, device="cpu"))
    after = {}
    for lam in (0.0, 0.9):
        model = _model()
        model.load_state_dict(base.state_dict())
        fit(model=model, train=tiny_split, target="emotion",
            config=TrainConfig(**{**CFG, "epochs": 4, "lr": 3e-3}),
            privacy=Privacy(loss="confusion", tap="pool", attribute="gender", lam=lam,
                            adversary=adversary))
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
    with pytest.raises(PrivatenetError, match="--resume"):
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
                                 dict(lr_decay=0.0), dict(device="tpu")])
def test_train_config_is_checked(bad):
    with pytest.raises(PrivatenetError):
        TrainConfig(**{**CFG, **bad})


def test_privacy_settings_are_checked(tiny_split):
    model = _model()
    with pytest.raises(PrivatenetError, match="outside"):
        Privacy(loss="confusion", tap="pool", attribute="gender", lam=1.5,
                adversary=_adversary(model))
    with pytest.raises(PrivatenetError, match="no tap"):
        fit(model=model, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
            privacy=Privacy(loss="confusion", tap="arm", attribute="gender", lam=0.5,
                            adversary=_adversary(model)))
