"""Streaming video-text data from WebDataset shards (DESIGN §1-3). Depends on torch, webdataset, decord and a tokenizer; never on `vl`."""

from datapipes.batch import Batch

__all__ = ["Batch"]
