"""MobileNetV2 + Coordinate Attention in PyTorch, written from the authors' published `mbv2_ca.py`
(github.com/houqb/CoordAttention): the reference `keras_attention.models.mobilenetv2_ca` must equal."""

import math

import torch
from torch import nn


class HSwish(nn.Module):
    def forward(self, x):
        return x * nn.functional.relu6(x + 3) / 6


class CoordAtt(nn.Module):
    """mbv2_ca.py's block: mip = max(8, inp // 32); conv1 + bn1 + h_swish shared; conv2 (H), conv3 (W)."""

    def __init__(self, inp, oup, groups=32):
        super().__init__()
        mip = max(8, inp // groups)
        self.conv1 = nn.Conv2d(inp, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.conv2 = nn.Conv2d(mip, oup, 1)
        self.conv3 = nn.Conv2d(mip, oup, 1)
        self.relu = HSwish()

    def forward(self, x):
        n, c, h, w = x.size()
        x_h = x.mean(3, keepdim=True)
        x_w = x.mean(2, keepdim=True).permute(0, 1, 3, 2)
        y = self.relu(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_h = self.conv2(x_h).sigmoid()
        x_w = self.conv3(x_w.permute(0, 1, 3, 2)).sigmoid()
        return x * x_w * x_h


def make_divisible(v, divisor, min_value=None):
    """mbv2_ca.py's `_make_divisible` (the TF slim rule: never more than 10 % below)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn(inp, oup, kernel, stride, groups=1):
    return [
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    ]


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.identity = stride == 1 and inp == oup
        if expand_ratio == 1:
            layers = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        else:
            layers = conv_bn(inp, hidden, 1, 1) + conv_bn(hidden, hidden, 3, stride, groups=hidden)
            layers.append(CoordAtt(hidden, hidden))
        layers += [nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.identity else self.conv(x)


class MBV2CA(nn.Module):
    cfgs = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes=1000, width_mult=1.0):
        super().__init__()
        divisor = 4 if width_mult == 0.1 else 8
        channels = make_divisible(32 * width_mult, divisor)
        layers = [nn.Sequential(*conv_bn(3, channels, 3, 2))]
        for t, c, n, s in self.cfgs:
            out = make_divisible(c * width_mult, divisor)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        self.features = nn.Sequential(*layers)
        last = make_divisible(1280 * width_mult, divisor) if width_mult > 1.0 else 1280
        self.conv = nn.Sequential(*conv_bn(channels, last, 1, 1))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(last, num_classes))

    def forward(self, x):
        x = self.avgpool(self.conv(self.features(x)))
        return self.classifier(x.view(x.size(0), -1))


def randomised(seed=0, width_mult=1.0, classes=1000):
    """The model with random weights (He-normal convolutions, as `_initialize_weights`) and non-trivial
    BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = MBV2CA(classes, width_mult)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                module.weight.normal_(0, math.sqrt(2.0 / fan))
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(1000)
    return model.eval()


def save_as_published(source, path, classifier_key="classifier"):
    """`torch.save` of the bare state dict. `classifier_key="classifier"` writes the classifier as the
    released mbv2_ca.pth keys it (`classifier.weight`, which its users rename to `classifier.1.weight`);
    "classifier.1" as mbv2_ca.py names it."""
    state = source.state_dict()
    if classifier_key == "classifier":
        state = {k.replace("classifier.1.", "classifier."): v for k, v in state.items()}
    torch.save(state, path)
    return path
