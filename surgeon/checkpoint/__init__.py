"""Out-of-core surgery: slim a safetensors checkpoint larger than memory, tensor by tensor
(`slim.py`), with calibration streamed node by node (`stream.py`), shards read and written one
tensor at a time (`shards.py`), the model built on the meta device (`model.py`)."""
from .slim import slim_checkpoint

__all__ = ["slim_checkpoint"]
