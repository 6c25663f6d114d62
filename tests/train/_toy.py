"""A tiny stand-in for TrainStep (same protocol) used by the trainer / checkpoint tests."""
import copy
from types import SimpleNamespace

import torch
from torch import nn


class ToyG(nn.Module):
    def __init__(self, z_dim=4):
        super().__init__()
        self.conv = nn.Conv2d(3 + z_dim, 3, 3, padding=1)

    def forward(self, A, z):
        zz = z[:, :, None, None].expand(-1, -1, A.shape[2], A.shape[3])
        return torch.tanh(self.conv(torch.cat([A, zz], 1)))


class ToyE(nn.Module):
    def __init__(self, z_dim=4):
        super().__init__()
        self.fc = nn.Linear(3, z_dim)

    def forward(self, B):
        return self.fc(B.mean((2, 3)))


class ToyStep:
    """D: a 1x1 conv; one Adam step for D, one for G+E; EMA of G and E; random noise from the
    global torch RNG (so RNG restore matters).  ``nan_at``: step (1-based) whose loss is NaN."""

    def __init__(self, z_dim=4, nan_at=None, lr=1e-2):
        self.models = SimpleNamespace(G=ToyG(z_dim), E=ToyE(z_dim), D=nn.Conv2d(6, 1, 1))
        self.G_ema = copy.deepcopy(self.models.G).requires_grad_(False)
        self.E_ema = copy.deepcopy(self.models.E).requires_grad_(False)
        ge = list(self.models.G.parameters()) + list(self.models.E.parameters())
        self.opt_g = torch.optim.Adam(ge, lr=lr, betas=(0.0, 0.99))
        self.opt_d = torch.optim.Adam(self.models.D.parameters(), lr=lr, betas=(0.0, 0.99))
        self.base_lr = lr
        self.lr_scale = 1.0
        self.calls = 0
        self.nan_at = nan_at
        self.images_per_call = None

    def set_lr_scale(self, s):
        self.lr_scale = float(s)
        for opt in (self.opt_g, self.opt_d):
            for g in opt.param_groups:
                g["lr"] = self.base_lr * s

    def __call__(self, A, B):
        self.calls += 1
        G, E, D = self.models.G, self.models.E, self.models.D
        noise = 0.01 * torch.randn_like(B)
        z = E(B + noise)
        fake = G(A, z)
        d_loss = (D(torch.cat([A, B], 1)) - 1).pow(2).mean() + D(torch.cat([A, fake.detach()], 1)).pow(2).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        g_loss = (D(torch.cat([A, fake], 1)) - 1).pow(2).mean() + (fake - B).abs().mean()
        if self.nan_at is not None and self.calls == self.nan_at:
            g_loss = g_loss * float("nan")
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        with torch.no_grad():
            for ema, m in ((self.G_ema, G), (self.E_ema, E)):
                for pe, p in zip(ema.parameters(), m.parameters()):
                    pe.lerp_(p, 0.1)
        return {"D": d_loss.detach(), "G": g_loss.detach()}

    def networks(self):
        return {"G": self.models.G, "E": self.models.E, "D": self.models.D, "G_ema": self.G_ema, "E_ema": self.E_ema}

    def preview(self, A, B, seed=0):
        from fastep.zoo.step.translator import sample_grid

        return sample_grid(self.G_ema, self.E_ema, A, B, z_dim=4, seed=seed)

    def state_dict(self):
        return {"G": self.models.G.state_dict(), "E": self.models.E.state_dict(), "D": self.models.D.state_dict(),
                "G_ema": self.G_ema.state_dict(), "E_ema": self.E_ema.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "lr_scale": self.lr_scale,
                "calls": self.calls}

    def load_state_dict(self, sd):
        self.models.G.load_state_dict(sd["G"])
        self.models.E.load_state_dict(sd["E"])
        self.models.D.load_state_dict(sd["D"])
        self.G_ema.load_state_dict(sd["G_ema"])
        self.E_ema.load_state_dict(sd["E_ema"])
        self.opt_g.load_state_dict(sd["opt_g"])
        self.opt_d.load_state_dict(sd["opt_d"])
        self.set_lr_scale(sd["lr_scale"])
        self.calls = sd["calls"]


class ToyPairs(torch.utils.data.Dataset):
    """Random (A, B) pairs with a random horizontal flip drawn from the global torch RNG."""

    def __init__(self, n=24, res=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.rand(n, 3, res, res, generator=g) * 2 - 1
        self.B = torch.rand(n, 3, res, res, generator=g) * 2 - 1

    def __len__(self):
        return len(self.A)

    def __getitem__(self, i):
        A, B = self.A[i], self.B[i]
        if torch.rand(()) < 0.5:
            A, B = A.flip(-1), B.flip(-1)
        return {"A": A, "B": B, "index": i}


def weights_of(step):
    out = {}
    for name in ("G", "E", "D"):
        for k, v in getattr(step.models, name).state_dict().items():
            out[f"{name}.{k}"] = v.clone()
    for name in ("G_ema", "E_ema"):
        for k, v in getattr(step, name).state_dict().items():
            out[f"{name}.{k}"] = v.clone()
    return out


def loop_args(kimg, **kw):
    """The Trainer's loop settings for the toy tests (the Trainer holds no defaults of its own:
    these are the tests' choices), with ``kw`` replacing any of them."""
    args = dict(kimg=kimg, device="cpu", seed=0, lr_decay_start_kimg=kimg * 2.0 / 3.0, log_every=20,
                ckpt_every_kimg=0.0, image_every_kimg=0.0, keep=3, num_workers=0)
    args.update(kw)
    return args
