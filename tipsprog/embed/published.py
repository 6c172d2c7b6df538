"""Published pretrained weights from local files: MedicalNet 3D ResNets, MONAI's SwinUNETR SSL, CT-FM.

Each loader reads the publisher's own file layout (``state_dict`` wrappers, ``module.`` and backbone prefixes,
renamed layers), infers the architecture from the tensors' names and shapes, builds the MONAI network and loads it.
Tensors the network needs but the file lacks, or with the wrong shape, are an error naming them; tensors the file
has but the encoder does not use (segmentation, rotation or contrastive heads) are reported in the LoadReport.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.networks.nets import ResNet
from monai.networks.nets.segresnet_ds import SegResEncoder
from monai.networks.nets.swin_unetr import SwinTransformer

from tipsprog.errors import InputError

WRAPPER_KEYS = ("state_dict", "model", "net", "network", "model_state_dict")
KEY_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "swinViT.", "swin_vit.")
RESNET_DEPTHS: dict[tuple[str, tuple[int, ...]], int] = {
    ("basic", (1, 1, 1, 1)): 10,
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
}
OPTIONAL_BUFFERS = ("num_batches_tracked", "relative_position_index")


@dataclass
class LoadReport:
    """What a weights file held beyond the network (ignored) and what the architecture was inferred to be."""

    architecture: str
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the console and the store's attributes."""
        ignored = (
            f"; ignored {len(self.ignored)} tensors not used by the encoder ({_examples(self.ignored)})" if self.ignored else ""
        )
        return f"{self.architecture}{ignored}"


def _examples(keys: list[str], count: int = 3) -> str:
    """A few key names for a message."""
    return ", ".join(keys[:count]) + (", …" if len(keys) > count else "")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .pt/.pth/.safetensors file, unwrapped and with publisher prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    payload: object
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload = load_file(str(path))
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types for a bad file
        raise InputError(f"{path}: not a readable weights file ({type(err).__name__})") from None
    while isinstance(payload, dict) and not any(isinstance(v, torch.Tensor) for v in payload.values()):
        inner = next((payload[k] for k in WRAPPER_KEYS if isinstance(payload.get(k), dict)), None)
        if inner is None:
            break
        payload = inner
    tensors = (
        {key: value for key, value in payload.items() if isinstance(value, torch.Tensor)} if isinstance(payload, dict) else {}
    )
    if not tensors:
        raise InputError(f"{path}: holds no tensors (expected a state dict, optionally under 'state_dict')")
    return {_strip_prefixes(key): value for key, value in tensors.items()}


def _strip_prefixes(key: str) -> str:
    """Drop DataParallel (`module.`) and wrapper prefixes (`model.`, `swinViT.`, …) from a key."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in KEY_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def load_into(network: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path, what: str) -> list[str]:
    """Load tensors into a network; error on missing or mis-shaped ones; return the ignored keys."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in tensors and not k.endswith(OPTIONAL_BUFFERS)]
    if missing:
        raise InputError(f"{path}: not {what} weights: {len(missing)} of {len(expected)} tensors missing ({_examples(missing)})")
    wrong = [
        f"{k} {tuple(tensors[k].shape)} ≠ {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if wrong:
        raise InputError(f"{path}: {what} weights of the wrong shape: {_examples(wrong, 2)}")
    network.load_state_dict({k: tensors[k] for k in expected if k in tensors}, strict=False)
    return sorted(k for k in tensors if k not in expected)


def _count(tensors: dict[str, torch.Tensor], pattern: str) -> int:
    """Number of distinct indices matched by a regex with one group."""
    return len({m.group(1) for k in tensors if (m := re.match(pattern, k))})


def _need(tensors: dict[str, torch.Tensor], key: str, path: Path, what: str) -> torch.Tensor:
    """One tensor the architecture is inferred from, or a clear error."""
    if key not in tensors:
        raise InputError(f"{path}: not {what} weights (no '{key}'; first keys: {_examples(sorted(tensors))})")
    return tensors[key]


def medicalnet_resnet(path: Path, depth: int) -> tuple[ResNet, LoadReport]:
    """A MedicalNet 3D ResNet (resnet_<depth>_23dataset.pth) as MONAI's ResNet with MedicalNet's dilated layers 3–4."""
    what = f"MedicalNet ResNet-{depth}"
    tensors = read_state_dict(path)
    conv1 = _need(tensors, "conv1.weight", path, what)
    block = "bottleneck" if "layer1.0.conv3.weight" in tensors else "basic"
    layers = tuple(_count(tensors, rf"layer{i}\.(\d+)\.") for i in range(1, 5))
    found = RESNET_DEPTHS.get((block, layers))
    if found != depth:
        held = f"a ResNet-{found}" if found else f"a ResNet with {block} blocks {list(layers)}"
        raise InputError(
            f"{path}: holds {held}, not a ResNet-{depth}" + (f"; use --encoder medicalnet-resnet{found}" if found else "")
        )
    widths = [int(_need(tensors, f"layer{i}.0.conv1.weight", path, what).shape[0]) for i in range(1, 5)]
    network = ResNet(
        block=block,
        layers=list(layers),
        block_inplanes=widths,
        spatial_dims=3,
        n_input_channels=int(conv1.shape[1]),
        conv1_t_size=int(conv1.shape[2]),
        conv1_t_stride=2,
        shortcut_type="B" if any(".downsample." in k for k in tensors) else "A",
        bias_downsample="layer2.0.downsample.0.bias" in tensors,
        feed_forward=False,
    )
    for layer, dilation in ((network.layer3, 2), (network.layer4, 4)):
        _dilate(layer, dilation)
    ignored = load_into(network, tensors, path, what)
    return network.eval(), LoadReport(f"ResNet-{depth} ({block} blocks {list(layers)}, widths {widths})", ignored)


def _dilate(layer: torch.nn.Sequential, dilation: int) -> None:
    """MedicalNet's layers 3 and 4: stride 1 and dilated 3×3×3 convolutions (same weights, finer feature map)."""
    for module in layer.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.stride = (1, 1, 1)
            if module.kernel_size[0] == 3:
                module.dilation, module.padding = (dilation,) * 3, (dilation,) * 3
        downsample = getattr(module, "downsample", None)
        if isinstance(downsample, functools.partial):
            # torch's Module.__setattr__ stub admits only tensors and modules; a plain attribute is set as usual
            module.downsample = functools.partial(downsample.func, **{**downsample.keywords, "stride": 1})  # type: ignore[assignment]


def swinunetr_ssl(path: Path) -> tuple[SwinTransformer, LoadReport]:
    """MONAI's self-supervised SwinUNETR backbone (model_swinvit.pt) as MONAI's SwinTransformer."""
    what = "SwinUNETR self-supervised"
    tensors = {
        k.replace("mlp.fc1.", "mlp.linear1.").replace("mlp.fc2.", "mlp.linear2."): v for k, v in read_state_dict(path).items()
    }
    patch_embed = _need(tensors, "patch_embed.proj.weight", path, what)
    depths = tuple(_count(tensors, rf"layers{i}\.0\.blocks\.(\d+)\.") for i in range(1, 5))
    tables = [_need(tensors, f"layers{i}.0.blocks.0.attn.relative_position_bias_table", path, what) for i in range(1, 5)]
    window = round(tables[0].shape[0] ** (1 / 3) + 1) // 2
    network = SwinTransformer(
        in_chans=int(patch_embed.shape[1]),
        embed_dim=int(patch_embed.shape[0]),
        window_size=(window,) * 3,
        patch_size=tuple(patch_embed.shape[2:]),
        depths=depths,
        num_heads=tuple(int(t.shape[1]) for t in tables),
        spatial_dims=3,
    )
    ignored = load_into(network, tensors, path, what)
    return network.eval(), LoadReport(f"Swin (embed {patch_embed.shape[0]}, depths {list(depths)}, window {window})", ignored)


def ctfm_segresencoder(path: Path) -> tuple[SegResEncoder, LoadReport]:
    """CT-FM's SegResNet feature extractor (model.safetensors) as MONAI's SegResEncoder."""
    what = "CT-FM SegResEncoder"
    tensors = read_state_dict(path)
    conv_init = _need(tensors, "conv_init.weight", path, what)
    blocks_down = tuple(_count(tensors, rf"layers\.{i}\.blocks\.(\d+)\.") for i in range(_count(tensors, r"layers\.(\d+)\.")))
    norm = "batch" if any(k.endswith("running_mean") for k in tensors) else "instance"
    network = SegResEncoder(
        spatial_dims=3,
        init_filters=int(conv_init.shape[0]),
        in_channels=int(conv_init.shape[1]),
        norm=norm,
        blocks_down=blocks_down,
    )
    ignored = load_into(network, tensors, path, what)
    return network.eval(), LoadReport(
        f"SegResEncoder (filters {conv_init.shape[0]}, blocks {list(blocks_down)}, {norm} norm)", ignored
    )
