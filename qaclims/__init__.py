"""QA-CLIMS weakly supervised semantic segmentation, stage by stage."""

import os

# huggingface_hub reads these when first imported, and open_clip imports it before any
# qaclims model module runs; set here, first, a hub id or tag missing from the local cache
# fails at once instead of retrying DNS for minutes. A user who set either variable wins.
if "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ:
    os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

__version__ = "0.1.0"
