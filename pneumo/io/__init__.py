"""Bytes to pixels: the raster and DICOM decoders behind one ``decode_image``, size and memory
rules, preprocessing, and reading files from disk.
"""
