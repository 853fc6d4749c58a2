"""PyTorch models of the published architectures, written here from their published structure.

The official CBAM ResNet (github.com/Jongchan/attention-module, MODELS/model_resnet.py
and MODELS/cbam.py) and timm's ResNet with SE / ECA (timm/models/resnet.py,
timm/layers/squeeze_excite.py, eca.py): the module names, which make the
state-dict keys, are theirs; the code is not copied. torch only: the tests
compare `keras_attention.models` against these.
"""

import math

import torch
from torch import nn


class OfficialCBAM(nn.Module):
    """ChannelGate (shared MLP over avg and max pooling, with biases) then SpatialGate (max, mean; 7x7 conv + BN)."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        hidden = channels // reduction
        self.ChannelGate = nn.Module()
        self.ChannelGate.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels)
        )
        self.SpatialGate = nn.Module()
        self.SpatialGate.spatial = nn.Module()
        self.SpatialGate.spatial.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.SpatialGate.spatial.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x):
        mlp = self.ChannelGate.mlp
        logits = mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True))
        x = x * torch.sigmoid(logits)[:, :, None, None]
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.SpatialGate.spatial.bn(self.SpatialGate.spatial.conv(pooled)))


def timm_make_divisible(value, divisor=8):
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class TimmSE(nn.Module):
    def __init__(self, channels):
        super().__init__()
        hidden = timm_make_divisible(channels / 16)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class TimmECA(nn.Module):
    def __init__(self, channels):
        super().__init__()
        t = int(abs(math.log(channels, 2) + 1) / 2)
        k = max(t if t % 2 else t + 1, 3)
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x):
        y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
        return x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1)


ATTENTION = {"cbam": ("cbam", OfficialCBAM), "se": ("se", TimmSE), "eca": ("se", TimmECA)}


class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride, attention, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        attribute, cls = ATTENTION[attention]
        self.attribute = attribute
        setattr(self, attribute, cls(planes * 4))
        self.downsample = downsample

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = getattr(self, self.attribute)(self.bn3(self.conv3(y)))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, blocks, attention, deep_stem=False, avg_down=False, classes=1000):
        super().__init__()
        if deep_stem:
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 64, 3, 1, 1, bias=False),
            )  # fmt: skip
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks)):
            stride = 1 if stage == 0 else 2
            if avg_down:
                pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
                downsample = nn.Sequential(
                    pool, nn.Conv2d(inplanes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
                )
            else:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
                )
            layers = [Bottleneck(inplanes, planes, stride, attention, downsample)]
            layers += [Bottleneck(planes * 4, planes, 1, attention, None) for _ in range(count - 1)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
            inplanes = planes * 4
        self.fc = nn.Linear(2048, classes)

    def features(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return x

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


SOURCES = {
    "resnet50_cbam": dict(blocks=(3, 4, 6, 3), attention="cbam"),
    "resnet101_cbam": dict(blocks=(3, 4, 23, 3), attention="cbam"),
    "seresnet50": dict(blocks=(3, 4, 6, 3), attention="se"),
    "ecaresnet50d": dict(blocks=(3, 4, 6, 3), attention="eca", deep_stem=True, avg_down=True),
    "ecaresnet101d": dict(blocks=(3, 4, 23, 3), attention="eca", deep_stem=True, avg_down=True),
}


def randomised(name, seed=0, classes=1000):
    """The source model with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = ResNet(**SOURCES[name], classes=classes)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(1000 + c)
    return model.eval()


def save_as_published(name, source, path):
    """Writes `source`'s weights as its publisher does: the official CBAM release as train_imagenet.py
    saved it with PyTorch 0.4 (the pre-1.6, non-zip format, DataParallel's `module.` prefix, the
    optimizer beside), timm's as safetensors."""
    state = source.state_dict()
    if name.endswith("_cbam"):
        optimizer = torch.optim.SGD(source.parameters(), 0.1, momentum=0.9)
        official = {
            "epoch": 100,
            "arch": "resnet",
            "best_prec1": torch.tensor(77.622),
            "optimizer": optimizer.state_dict(),
        }
        state = {f"module.{k}": v for k, v in state.items()}
        torch.save({**official, "state_dict": state}, path, _use_new_zipfile_serialization=False)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())
