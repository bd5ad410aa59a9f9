"""Checkers for the notebooks' exercises: pass your function, get a verdict.

Each `check_*` calls the learner's code on random inputs, compares with the package (and,
where there is one, an independent reference such as `torch.nn.RMSNorm`), prints a one-line
verdict and returns True. A wrong answer raises AssertionError with what differed, so that a
notebook cell stops right there.

One module per notebook (`nb01_config` ... `nb07_training`, later ones as they come), all
re-exported here, so a notebook calls `lc.checks.check_rmsnorm_backward(...)`.
"""

from .nb01_config import check_num_parameters
from .nb01_config import check_big_llamas, check_gpt2_num_parameters
from .nb02_rmsnorm import check_rmsnorm_backward, check_eps_threshold
from .nb03_rope import check_rotate_half_matrix, check_ntk_theta
from .nb04_attention import check_causal_mask, check_chunked_attention, check_max_context
from .nb05_ffn import check_fused_swiglu, check_glu_ffn
from .nb06_model import check_greedy, check_parallel_block, check_top_k
from .nb07_training import check_grad_accumulation, check_wsd, check_top_p
from .nb08_real_models import check_chatml, check_dequantize_q4_1
