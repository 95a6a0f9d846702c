"""Offline data tools behind ``vlkit data``: packing annotation lists into webdataset shards (``pack``) and
filtering them (``filter``)."""
