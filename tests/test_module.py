import pytest
import torch

from scorelens.priors.module import ScorePriorModule, _Warmup

NET = dict(channels=1, resolution=16, nf=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8])
OPTIM = dict(lr=1e-3, warmup_steps=4)


def make_module(**kw) -> ScorePriorModule:
    return ScorePriorModule(kind="lens_light", net=NET, sde=dict(sigma_min=1e-3, sigma_max=50.0), optim=OPTIM,
                            **kw)


def test_ema_follows_the_exponential_moving_average_formula():
    module = make_module(ema_decay=0.9)
    history = []
    for k in range(5):
        with torch.no_grad():
            for p in module.net.parameters():
                p.add_(0.1 * (k + 1))
        history.append([p.detach().clone() for p in module.net.parameters()])
        module._update_ema()  # without a trainer the step is 0: decay = min(0.9, 1/10) = 0.1
    # independent recursion: e <- d e + (1 - d) p with d = 0.1 from the initial weights
    ema = [h.clone() - 0.1 for h in history[0]]
    for weights in history:
        ema = [0.1 * e + 0.9 * w for e, w in zip(ema, weights, strict=True)]
    for e, p in zip(ema, module.ema_net.parameters(), strict=True):
        torch.testing.assert_close(p, e, rtol=1e-6, atol=1e-6)


def test_ema_network_stays_in_eval_mode_and_frozen():
    module = make_module()
    module.train()
    assert module.net.training and not module.ema_net.training
    assert not any(p.requires_grad for p in module.ema_net.parameters())


def test_warmup_schedule():
    f = _Warmup(4)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert _Warmup(0)(0) == 1.0


def test_optimiser_and_schedule():
    module = make_module()
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in module.net.parameters()}
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="kind"):
        ScorePriorModule(kind="galaxy", net=NET, sde=dict(sigma_min=1e-3, sigma_max=50.0), optim=OPTIM)
    with pytest.raises(ValueError, match="ema_decay"):
        make_module(ema_decay=1.0)


def test_hyperparameters_are_plain_values():
    """Checkpoints must load with weights_only=True: nothing but plain containers in the hyperparameters."""
    module = make_module()

    def plain(v):
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, list | tuple):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, bool | int | float | str)

    assert plain(dict(module.hparams))


def test_a_batch_with_a_nan_image_stops_training_before_the_update():
    from scorelens.errors import InputError

    module = make_module()
    before = [p.detach().clone() for p in module.net.parameters()]
    batch = torch.zeros(3, 1, 16, 16)
    batch[1, 0, 4, 5] = float("nan")
    # Lightning hands every batch to this hook before the step that would update the weights with it
    with pytest.raises(InputError, match=r"a batch at global step 0: image\(s\) \[1\] of its 3 hold NaN"):
        module.on_before_batch_transfer(batch, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, module.net.parameters(), strict=True))
    clean = torch.zeros(2, 1, 16, 16)
    assert module.on_before_batch_transfer(clean, 0) is clean


def test_lightning_stops_at_the_nan_batch_before_any_update(tmp_path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from scorelens.errors import InputError

    module = make_module()
    before = [p.detach().clone() for p in module.net.parameters()]
    images = torch.randn(8, 1, 16, 16)
    images[5, 0, 3, 3] = float("inf")  # in the second batch of 4: the first one's update happens
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(InputError, match=r"global step 1: image\(s\) \[1\] of its 4 hold NaN or inf"):
        trainer.fit(module, DataLoader(TensorDataset(images), batch_size=4))
    assert module.global_step == 1  # one update, from the clean batch; none from the bad one
    assert any(not torch.equal(a, b) for a, b in zip(before, module.net.parameters(), strict=True))
    assert not list(tmp_path.rglob("*.ckpt"))
