"""Suite-wide settings."""

import torch

# The models under test are tiny: one thread avoids oversubscribing CI's two cores (DataLoader
# workers, subprocess CLI runs) and makes timings steadier.
torch.set_num_threads(1)
