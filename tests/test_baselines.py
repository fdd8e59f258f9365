"""The sanity baselines: `pixels` (no backbone) and `micro-mae-init` (no pre-training)."""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench import engine, recipes
from bench.backbone import load_backbone
from bench.data import TASKS, Preprocess
from bench.methods.linear import probe_head
from bench.methods.pixels import FlatPixels


def test_pixel_features_are_the_flattened_preprocessed_images(digits_train):
    backbone = load_backbone("micro-mae")
    preprocess = Preprocess(backbone.input_size, backbone.mean, backbone.std)
    images = preprocess(digits_train.images[:8])
    features = FlatPixels(32)(images)
    assert features.shape == (8, 3 * 32 * 32)
    assert torch.equal(features, images.reshape(8, -1))


def test_pixels_downsize_to_their_size_and_keep_a_flat_image_flat():
    flat = torch.full((2, 3, 64, 64), 0.25)
    features = FlatPixels(16)(flat)
    assert features.shape == (2, 3 * 16 * 16)
    assert torch.allclose(features, torch.tensor(0.25))


def test_pixels_run_matches_scikit_learn_logistic_regression_on_the_same_pixels():
    """The engine's pixel row is a linear classifier on these pixels: scikit-learn's, fitted to the same 400
    training images, must score about the same on the 500 test images."""
    record = engine.run(recipes.make_spec("pixels", "digits", "micro-mae", 0))
    data = TASKS.get("digits").load()
    backbone = load_backbone("micro-mae")
    preprocess = Preprocess(backbone.input_size, backbone.mean, backbone.std)
    train_x, test_x = (preprocess(s.images).flatten(1).numpy() for s in (data.train, data.test))
    oracle = LogisticRegression(C=0.1, max_iter=2000).fit(train_x, data.train.labels.numpy())
    oracle_acc = 100 * oracle.score(test_x, data.test.labels.numpy())

    assert oracle_acc > 85  # far above chance (10%): the comparison below means something
    assert record.metrics.test_acc == pytest.approx(oracle_acc, abs=3.0)
    assert record.params.learnable == 3 * 32 * 32 * 10 + 10
    assert record.params.learnable_without_head == 0
    assert record.method_info == {"pixels_per_side": 32, "features": 3072}


def test_pixels_size_must_be_positive():
    from bench import BenchError

    with pytest.raises(BenchError, match="size=0"):
        recipes.make_spec("pixels", "digits", "micro-mae", 0, {"size": 0})


def test_micro_mae_init_is_micro_mae_without_its_pretrained_weights():
    pretrained, control = load_backbone("micro-mae"), load_backbone("micro-mae-init")
    assert control.weights_source == "random-init(seed=0)"
    assert pretrained.weights_source.startswith("package:")
    for fact in ("pooling", "objective", "input_size", "mean", "std"):
        assert getattr(control, fact) == getattr(pretrained, fact)
    assert control.num_params == pretrained.num_params
    own, other = control.model.state_dict(), pretrained.model.state_dict()
    assert own.keys() == other.keys()
    assert not torch.equal(own["blocks.0.attn.qkv.weight"], other["blocks.0.attn.qkv.weight"])
    # Seeded: every run that names it gets the same weights.
    again = load_backbone("micro-mae-init").model.state_dict()
    assert all(torch.equal(own[k], again[k]) for k in own)


def test_micro_mae_init_runs_under_micro_maes_recipe_values():
    for method in ("spt-deep", "vpt-deep"):
        specs = [recipes.make_spec(method, "digits", b, 0, recipe="spt-paper") for b in ("micro-mae", "micro-mae-init")]
        assert specs[0].hparams == specs[1].hparams


def _train_probe(features: torch.Tensor, labels: torch.Tensor, feature_norm: str) -> torch.Tensor:
    torch.manual_seed(0)
    head = probe_head(features.shape[1], 3, feature_norm)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    for step in range(400):  # long enough for the running statistics to forget their initial 0 and 1
        batch = slice(step % 4 * 16, step % 4 * 16 + 16)
        loss = torch.nn.functional.cross_entropy(head(features[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval()(features)


def test_batchnorm_probe_is_blind_to_how_each_feature_is_scaled_and_shifted():
    """MAE's probe standardises every feature: training on features rescaled and shifted per dimension gives the
    same classifier outputs; the plain probe, trained the same way, does not."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, 5, generator=generator)
    labels = torch.randint(0, 3, (64,), generator=generator)
    scale, shift = torch.tensor([0.01, 1.0, 30.0, 5.0, 0.2]), torch.tensor([10.0, -3.0, 0.0, 7.0, -5.0])
    moved = features * scale + shift
    assert torch.allclose(_train_probe(features, labels, "batchnorm"), _train_probe(moved, labels, "batchnorm"),
                          atol=1e-3)
    assert not torch.allclose(_train_probe(features, labels, "none"), _train_probe(moved, labels, "none"), atol=1e-1)


def test_standardised_pixels_run_matches_scikit_learn_on_standardised_pixels():
    record = engine.run(recipes.make_spec("pixels", "sprites-loc", "micro-mae", 0, {"feature_norm": "batchnorm"}))
    data = TASKS.get("sprites-loc").load()
    backbone = load_backbone("micro-mae")
    preprocess = Preprocess(backbone.input_size, backbone.mean, backbone.std)
    train_x, test_x = (preprocess(s.images).flatten(1).numpy() for s in (data.train, data.test))
    oracle = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    oracle_acc = 100 * oracle.fit(train_x, data.train.labels.numpy()).score(test_x, data.test.labels.numpy())

    assert oracle_acc > 70  # far above chance (12.5%)
    # Loose by necessity: `pixels` trains with AdamW for 100 epochs and no weight decay, scikit-learn with L-BFGS and
    # an L2 penalty, and the run itself moves by a point with torch's thread count and CPU kernels (76.4 to 77.6 on
    # seed 0, against scikit-learn's 81.0 to 81.2), 6 images of the 500.
    assert record.metrics.test_acc == pytest.approx(oracle_acc, abs=6.0)
    assert record.params.learnable == 3 * 32 * 32 * 8 + 8  # the standardisation learns nothing


def test_feature_norm_must_be_known():
    from bench import BenchError

    with pytest.raises(BenchError, match="feature_norm='layer'.*none or batchnorm"):
        recipes.make_spec("linear", "digits", "micro-mae", 0, {"feature_norm": "layer"})
