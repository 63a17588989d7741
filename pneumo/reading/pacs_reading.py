"""Reading images from the PACS with retrieval, decoding and the models overlapped.

:func:`read_instances` retrieves the instances ``config.PACS_RETRIEVE_WORKERS`` at a time
(:meth:`pneumo.io.pacs.PacsClient.retrieve_all`); each retrieving thread hands the file to the
shared decoding threads (:func:`pneumo.reading.reader.decode_files`) and keeps only the decoded
reading and the header without pixels, so a file's bytes are dropped as soon as it is decoded.
The models and checks (:func:`pneumo.reading.reader.check_decoded`) run on each batch of
``batch_size`` images, in order, while the next ones are retrieved and decoded. A reading is
the reading of the same file uploaded: the same decoder and the same checks, in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pneumo.io import pacs
from pneumo.reading import reader
from pneumo.reading.reader import Reading


@dataclass
class PacsReading:
    """One instance read: where it is, its reading (named by its SOP Instance UID) and its
    header without pixels (None when it could not be retrieved; the reading says why).
    ``retrieved``: False when the PACS did not send the instance."""

    ref: pacs.InstanceRef
    reading: Reading
    header: object | None = None  # pydicom Dataset, to store results in the study
    retrieved: bool = True


def _decoded(ref: pacs.InstanceRef, data: bytes) -> tuple[object, Reading]:
    """On a retrieving thread: the header (None if it cannot be parsed; the decoder then says
    what is wrong), and the file decoded on the shared decoding threads."""
    try:
        header = pacs.header_of(data)
    except Exception:  # a damaged file: its reading carries the decoder's message
        header = None
    (reading,) = reader.decode_files([(ref.sop_instance_uid, data)])
    return header, reading


def read_instances(client: pacs.PacsClient, refs: Sequence[pacs.InstanceRef], explainer, *,
                   batch_size: int = 16, workers: int | None = None,
                   ood_check: Callable | None = None, segmenter=None, quality_checker=None,
                   scope_check: Callable | None = None,
                   auto_correct: bool = False) -> Iterator[list[PacsReading]]:
    """Retrieve and read ``refs``; yields one list of :class:`PacsReading` per ``batch_size``
    of them, in order, each read with every check given. An instance that cannot be retrieved
    gets a reading with its :class:`pneumo.io.pacs.PacsError` sentence as ``error``; the rest go
    on. At most ``workers`` files are held at once; the next batch is retrieved while the
    caller handles this one. ``auto_correct``: a film the quality check finds turned, flipped
    or inverted gets its corrected copy's reading (:func:`pneumo.reading.reader.read_corrected`)
    in place of its own, as ``python -m pneumo.predict --auto-correct`` does."""
    refs = list(refs)
    items = client.retrieve_all(refs, workers, then=_decoded, ahead=batch_size)
    chunk: list[PacsReading] = []
    for i, (ref, item) in enumerate(zip(refs, items)):
        if isinstance(item, pacs.PacsError):
            chunk.append(PacsReading(ref, Reading(name=ref.sop_instance_uid, digest="",
                                                  error=str(item)), retrieved=False))
        else:
            header, reading = item
            chunk.append(PacsReading(ref, reading, header))
        if len(chunk) == batch_size or i == len(refs) - 1:
            reader.check_decoded([p.reading for p in chunk], explainer, ood_check,
                                 batch_size=batch_size, segmenter=segmenter,
                                 quality_checker=quality_checker, scope_check=scope_check)
            if auto_correct:
                corrected = {r.name: r for r in reader.read_corrected(
                    [p.reading for p in chunk], explainer, ood_check=ood_check,
                    segmenter=segmenter, batch_size=batch_size, scope_check=scope_check)}
                for p in chunk:
                    p.reading = corrected.get(p.reading.name, p.reading)
            yield chunk
            chunk = []
