"""embed: publishers' checkpoint layouts, mask pooling, masked-volume pre-training, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from monai.networks.nets import ResNet
from monai.networks.nets.segresnet_ds import SegResEncoder
from monai.networks.nets.swin_unetr import SwinTransformer
from safetensors.torch import save_file

import tipsprog.embed as embed_stage
from conftest import invoke
from tipsprog.embed import embed_crops, masked_pool, random_encoder
from tipsprog.embed.encoders import load_encoder
from tipsprog.embed.ssl import FitSettings, fit_ssl, load_ssl_weights, save_ssl_weights, ssl_fitted_on
from tipsprog.errors import InputError

CPU = torch.device("cpu")


def _crops(count: int = 3, seed: int = 0) -> np.ndarray:
    """Random CT crops with a cube-shaped ROI mask, in the stored crops' layout [N, 2, 32, 32, 32]."""
    rng = np.random.default_rng(seed)
    crops = np.zeros((count, 2, 32, 32, 32), np.float32)
    crops[:, 0] = rng.uniform(-1, 1, (count, 32, 32, 32))
    for i in range(count):
        low = 6 + 2 * i
        crops[i, 1, low : low + 14, low : low + 16, low : low + 12] = 1.0
    return crops


def _medicalnet_file(path: Path, block: str, layers: list[int], shortcut: str) -> ResNet:
    """A narrow random MedicalNet checkpoint as its repository saves it: DataParallel keys, a segmentation head."""
    torch.manual_seed(1)
    source = ResNet(
        block,
        layers,
        [8, 16, 32, 64],
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type=shortcut,
        bias_downsample=False,
        feed_forward=False,
    )
    tensors = {f"module.{k}": v for k, v in source.state_dict().items()}
    tensors["module.conv_seg.0.weight"] = torch.zeros(32, 64, 3, 3, 3)
    tensors["module.conv_seg.0.bias"] = torch.zeros(32)
    torch.save({"epoch": 200, "state_dict": tensors}, path)
    return source


def _swin_file(path: Path) -> SwinTransformer:
    """A small random model_swinvit.pt: `module.` keys, the original Swin MLP names fc1/fc2, SSL heads."""
    torch.manual_seed(2)
    source = SwinTransformer(
        in_chans=1,
        embed_dim=12,
        window_size=(7, 7, 7),
        patch_size=(2, 2, 2),
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 2, 4),
        spatial_dims=3,
    )
    tensors = {
        f"module.{k}".replace("mlp.linear1.", "mlp.fc1.").replace("mlp.linear2.", "mlp.fc2."): v
        for k, v in source.state_dict().items()
    }
    tensors["module.rotation_head.weight"] = torch.zeros(4, 96)
    tensors["module.contrastive_head.weight"] = torch.zeros(512, 96)
    torch.save({"epoch": 100, "state_dict": tensors}, path)
    return source


def _ctfm_file(path: Path) -> SegResEncoder:
    """A small random CT-FM feature extractor in its Hugging Face layout: model.safetensors, bare keys."""
    torch.manual_seed(3)
    source = SegResEncoder(spatial_dims=3, in_channels=1, init_filters=4, norm="batch", blocks_down=(1, 2, 2, 4, 4))
    save_file(source.state_dict(), str(path))
    return source


def test_medicalnet_layouts_load_with_their_weights(tmp_path):
    for depth, block, layers, shortcut in (
        (10, "basic", [1, 1, 1, 1], "B"),
        (18, "basic", [2, 2, 2, 2], "A"),
        (50, "bottleneck", [3, 4, 6, 3], "B"),
    ):
        path = tmp_path / f"resnet_{depth}_23dataset.pth"
        source = _medicalnet_file(path, block, layers, shortcut)
        encoder = load_encoder(f"medicalnet-resnet{depth}", path)
        loaded = encoder.backbone.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())
        assert encoder.report.ignored == ["conv_seg.0.bias", "conv_seg.0.weight"]
        assert f"ResNet-{depth}" in encoder.report.summary() and "conv_seg" in encoder.report.summary()
        feature_map = encoder(torch.from_numpy(_crops(1)))
        assert feature_map.shape == (1, 64 * (4 if block == "bottleneck" else 1), 4, 4, 4)


def test_medicalnet_layers_3_and_4_are_dilated_like_the_original(tmp_path):
    _medicalnet_file(tmp_path / "r10.pth", "basic", [1, 1, 1, 1], "B")
    backbone = load_encoder("medicalnet-resnet10", tmp_path / "r10.pth").backbone
    assert backbone.layer3[0].conv1.stride == (1, 1, 1) and backbone.layer3[0].conv1.dilation == (2, 2, 2)
    assert backbone.layer4[0].conv2.dilation == (4, 4, 4) and backbone.layer2[0].conv1.stride == (2, 2, 2)


def test_wrong_depth_missing_and_misshaped_tensors_are_named(tmp_path):
    path = tmp_path / "resnet_18_23dataset.pth"
    _medicalnet_file(path, "basic", [2, 2, 2, 2], "A")
    with pytest.raises(InputError, match="holds a ResNet-18, not a ResNet-50; use --encoder medicalnet-resnet18"):
        load_encoder("medicalnet-resnet50", path)
    state = torch.load(path, weights_only=True)["state_dict"]
    del state["module.layer2.1.bn2.weight"]
    torch.save({"state_dict": state}, tmp_path / "missing.pth")
    with pytest.raises(InputError, match=r"1 of \d+ tensors missing \(layer2.1.bn2.weight\)"):
        load_encoder("medicalnet-resnet18", tmp_path / "missing.pth")
    state["module.layer2.1.bn2.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp_path / "shape.pth")
    with pytest.raises(InputError, match=r"wrong shape: layer2.1.bn2.weight \(3,\) ≠ \(16,\)"):
        load_encoder("medicalnet-resnet18", tmp_path / "shape.pth")
    with pytest.raises(InputError, match="not CT-FM SegResEncoder weights .no 'conv_init.weight'"):
        load_encoder("ctfm", path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt: not a readable weights file"):
        load_encoder("swinunetr", tmp_path / "junk.pt")


def test_swinunetr_ssl_layout_loads(tmp_path):
    source = _swin_file(tmp_path / "model_swinvit.pt")
    encoder = load_encoder("swinunetr", tmp_path / "model_swinvit.pt")
    loaded = encoder.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())
    assert encoder.report.ignored == ["contrastive_head.weight", "rotation_head.weight"]
    assert "embed 12, depths [1, 1, 1, 1], window 7" in encoder.report.summary()
    assert encoder(torch.from_numpy(_crops(1))).shape == (1, 96, 4, 4, 4)


def test_ctfm_safetensors_layout_loads(tmp_path):
    source = _ctfm_file(tmp_path / "model.safetensors")
    encoder = load_encoder("ctfm", tmp_path / "model.safetensors")
    loaded = encoder.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items()) and not encoder.report.ignored
    assert encoder(torch.from_numpy(_crops(1))).shape == (1, 64, 4, 4, 4)


def test_pooling_ignores_everything_outside_the_mask():
    torch.manual_seed(0)
    feature_map = torch.randn(2, 5, 4, 4, 4)
    mask = torch.zeros(2, 1, 32, 32, 32)
    mask[:, :, :16, :16, :16] = 1.0
    pooled = masked_pool(feature_map, mask, "mean+max")
    inside = feature_map[:, :, :2, :2, :2]
    np.testing.assert_allclose(pooled[:, :5], inside.mean(dim=(2, 3, 4)), rtol=1e-6)
    np.testing.assert_allclose(pooled[:, 5:], inside.amax(dim=(2, 3, 4)), rtol=1e-6)
    changed = feature_map.clone()
    changed[:, :, 3] = 100.0
    assert torch.equal(masked_pool(changed, mask, "mean+max"), pooled)


def test_embeddings_do_not_depend_on_batching():
    crops = _crops(5)
    encoder = random_encoder()
    one_by_one = embed_crops(encoder, crops, CPU, "mean+max", batch_size=1)
    batched = embed_crops(encoder, crops, CPU, "mean+max", batch_size=4)
    np.testing.assert_allclose(one_by_one, batched, atol=1e-5)


def test_masked_reconstruction_learns_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    crops = _crops(24, seed=1)
    smooth = np.cumsum(np.cumsum(rng.standard_normal((24, 32, 32, 32)), axis=1), axis=2)
    crops[:, 0] = np.tanh(smooth / smooth.std())
    losses = []
    network = fit_ssl(crops, FitSettings(epochs=6, batch_size=8), CPU, lambda epoch, loss: losses.append(loss))
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0]
    save_ssl_weights(network, tmp_path / "ssl.pt")
    reloaded = load_ssl_weights(tmp_path / "ssl.pt")
    assert all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), reloaded.state_dict().values()))
    save_ssl_weights(network, tmp_path / "again.pt")  # the same weights give the same file (the bundle digests it)
    assert (tmp_path / "again.pt").read_bytes() == (tmp_path / "ssl.pt").read_bytes()


def test_cli_embeds_with_published_weights(pipeline, tmp_path):
    _medicalnet_file(tmp_path / "resnet_18_23dataset.pth", "basic", [2, 2, 2, 2], "A")
    result = invoke(
        "embed",
        pipeline.seg,
        "--out",
        tmp_path / "mn.h5",
        "--encoder",
        "medicalnet-resnet18",
        "--weights",
        tmp_path / "resnet_18_23dataset.pth",
        "--pool",
        "mean+max",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "ignored 2 tensors" in result.output
    with h5py.File(tmp_path / "mn.h5") as store:
        block = store["features/embed-medicalnet-resnet18"]
        names = [n.decode() for n in block["names"][()]]
        groups = {g.decode() for g in block["groups"][()]}
        assert block["values"].shape == (30, 2 * 2 * 64) and np.isfinite(block["values"][()]).all()
        assert names[0] == "embed-medicalnet-resnet18/liver/0" and names[-1] == "embed-medicalnet-resnet18/spleen/127"
        assert groups == {f"{roi}/embed-medicalnet-resnet18/{pool}" for roi in ("liver", "spleen") for pool in ("mean", "max")}
        assert block.attrs["encoder"] == "medicalnet-resnet18" and block.attrs["pooling"] == "mean+max"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("--encoder", "swinunetr", "--fit"), "--fit trains the ssl encoder only"),
        (("--encoder", "ctfm"), "--encoder ctfm: needs --weights PATH"),
        (("--encoder", "resnet"), "--encoder resnet: unknown encoder; choose one of ssl, medicalnet-resnet10"),
        (("--encoder", "ctfm", "--weights", "absent.safetensors"), "absent.safetensors: weights file not found"),
        (("--pool", "median"), "--pool median: choose one of mean, mean+max"),
    ],
)
def test_cli_embed_input_errors(pipeline, tmp_path, arguments, message):
    result = invoke("embed", pipeline.seg, "--out", tmp_path / "e.h5", *arguments)
    assert result.exit_code == 2 and message in result.output and not (tmp_path / "e.h5").exists()


def _fitted_on(path: Path, block: str = "features/embed-ssl") -> object:
    """The encoder_fitted_on attr of a store's ssl block, parsed (the text itself where it is no JSON list)."""
    with h5py.File(path) as store:
        text = str(store[block].attrs["encoder_fitted_on"])
    return json.loads(text) if text.startswith("[") else text


def test_embed_fit_records_its_patients_and_fit_ids_restrict_them(pipeline, tmp_path, monkeypatch):
    """The weights and the block name every patient pre-training saw; --fit-ids pre-trains on the listed ones only,
    and a store embedded later with those weights (no --fit) carries the same list; older weights read 'unknown'."""
    with h5py.File(pipeline.seg) as seg:
        everyone = [p.decode() for p in seg["patients"][()]]
        liver = seg["segment/crops/liver"][()]
    assert _fitted_on(pipeline.embed) == everyone and ssl_fitted_on(pipeline.embed.with_suffix(".pt")) == everyone
    listed = everyone[::3][::-1]
    pd.DataFrame({"patient_id": listed}).to_csv(tmp_path / "fit.csv", index=False)
    seen = []
    real_fit = embed_stage.fit_ssl
    monkeypatch.setattr(embed_stage, "fit_ssl", lambda crops, *args: seen.append(crops) or real_fit(crops, *args))
    result = invoke(
        "embed",
        pipeline.seg,
        "--out",
        tmp_path / "e.h5",
        "--fit",
        "--fit-ids",
        tmp_path / "fit.csv",
        "--epochs",
        1,
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    rows = sorted(everyone.index(pid) for pid in listed)
    np.testing.assert_array_equal(seen[0][: len(rows)], liver[rows])
    assert len(seen[0]) == 2 * len(rows)
    assert sorted(_fitted_on(tmp_path / "e.h5")) == sorted(listed) == sorted(ssl_fitted_on(tmp_path / "e.pt"))
    result = invoke(
        "embed", pipeline.seg, "--out", tmp_path / "later.h5", "--weights", tmp_path / "e.pt", "--device", "cpu", "--quiet"
    )
    assert result.exit_code == 0, result.output
    assert sorted(_fitted_on(tmp_path / "later.h5")) == sorted(listed)
    save_ssl_weights(random_encoder().backbone, tmp_path / "old.pt")  # as weights saved before the record existed
    result = invoke(
        "embed", pipeline.seg, "--out", tmp_path / "old.h5", "--weights", tmp_path / "old.pt", "--device", "cpu", "--quiet"
    )
    assert result.exit_code == 0 and _fitted_on(tmp_path / "old.h5") == "unknown"


@pytest.mark.parametrize(
    "rows, arguments, message",
    [
        (["P0001"], (), "--fit-ids {ids}: chooses the patients --fit pre-trains the encoder on; give --fit too"),
        (["P0001", "X9"], ("--fit",), "{ids}: patient X9 is not in {seg}"),
        ([], ("--fit",), "{ids}: lists no patient"),
        (None, ("--fit",), "{ids}: missing required column 'patient_id'"),
    ],
)
def test_cli_embed_fit_ids_errors(pipeline, tmp_path, rows, arguments, message):
    ids = tmp_path / "ids.csv"
    table = pd.DataFrame({"patient_id": rows}) if rows is not None else pd.DataFrame({"id": ["P0001"]})
    table.to_csv(ids, index=False)
    result = invoke(
        "embed", pipeline.seg, "--out", tmp_path / "e.h5", "--fit-ids", ids, *arguments, "--epochs", 1, "--device", "cpu"
    )
    assert result.exit_code == 2 and message.format(ids=ids, seg=pipeline.seg) in result.output.replace("\n", "")
    assert not (tmp_path / "e.h5").exists() and not (tmp_path / "e.pt").exists()


@pytest.mark.slow
def test_embed_on_a_dask_process_cluster_writes_the_local_store(pipeline, tmp_path):
    """--scheduler: the pipeline's scans embedded by a two-process Dask cluster, in batches of 8 patients read by
    the workers, give the store a local run with the same batch size writes."""
    from distributed import LocalCluster

    weights = pipeline.embed.with_suffix(".pt")
    common = ("--weights", weights, "--batch-size", 8, "--device", "cpu", "--quiet")
    assert invoke("embed", pipeline.seg, "--out", tmp_path / "local.h5", *common).exit_code == 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result = invoke("embed", pipeline.seg, "--out", tmp_path / "dask.h5", *common, "--scheduler", cluster.scheduler_address)
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "local.h5") as local, h5py.File(tmp_path / "dask.h5") as dask:
        for key in ("values", "names", "groups"):
            np.testing.assert_array_equal(local[f"features/embed-ssl/{key}"][()], dask[f"features/embed-ssl/{key}"][()])
        assert dict(local["features/embed-ssl"].attrs) == dict(dask["features/embed-ssl"].attrs)
