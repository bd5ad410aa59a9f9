"""Checkers for the notebooks' exercises: pass your function, get a verdict.

Each `check_*` calls the learner's code on random inputs, compares with the package (and,
where there is one, an independent reference such as `torch.nn.RMSNorm`), prints a one-line
verdict and returns True. A wrong answer raises AssertionError with what differed, so that a
notebook cell stops right there.

One module per notebook (`nb01_config` ... `nb07_training`, later ones as they come), all
re-exported here, so a notebook calls `lc.checks.check_rmsnorm(...)`.
"""

from .nb01_config import check_num_parameters, check_kv_cache_bytes
from .nb02_rmsnorm import check_rmsnorm, check_layernorm
from .nb03_rope import check_rope, check_permute_qk
from .nb04_attention import check_causal_mask, check_repeat_kv
from .nb05_ffn import check_ffn_hidden_dim, check_swiglu
from .nb06_model import check_block, check_greedy
from .nb07_training import check_targets, check_top_p
