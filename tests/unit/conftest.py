import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch

# Tiny models: thread start-up costs more than it saves, and CI shares 2 cores.
torch.set_num_threads(1)
