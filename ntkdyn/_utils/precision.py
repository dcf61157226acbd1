"""Process-wide numerical settings.

ntkdyn's solver works in float64: the kernel-space recursion must agree with
brute-force training of the linearised network to round-off, which float32
cannot deliver over thousands of steps.  Importing :mod:`ntkdyn` therefore
turns on ``jax_enable_x64``.  Code that trains real networks still chooses its
own dtype explicitly (float32 by default).
"""

import jax

jax.config.update("jax_enable_x64", True)
