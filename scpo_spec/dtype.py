"""Every tensor of a rollout, a policy and a certificate is float64: one definition."""

import torch

DTYPE = torch.float64
