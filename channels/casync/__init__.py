"""casync's formats, so a host fetches only the chunks of a release it does not have.

One module per job; stdlib + zstandard only (it runs on the host):

- ``buzhash``: casync's hash table and rolling hash (48-byte window).
- ``chunker``: the content-defined chunker, bit-exact with Debian's casync 2+20201210;
  ``ChunkerParams``, ``DEFAULT_PARAMS``, ``iter_chunks``, the pure-Python reference scanner.
- ``fastchunk``: the same scanner in C (no libc), built into a shared library, used by ctypes.
- ``index``: the ``.caibx`` blob index (``BlobIndex``), byte-identical to ``casync make``'s.
- ``store``: the ``.castr`` chunk store (``ChunkStore``) and verified, bounded ``decode_chunk``.
- ``make``: chunk + index (+ store) a file, as ``casync make``.
- ``seed``: re-chunk what a host has (a device or file) into chunk id -> location.
- ``plan`` (pure) and ``assemble`` (I/O): build a file or slot from seeds, the local chunk
  cache and fetched chunks, verifying every chunk before writing it.

Default chunk sizes (``chunker.DEFAULT_PARAMS``): min/avg/max 4/16/64 KiB, casync's shape
(min = avg/4, max = avg*4, the range its discriminator formula is calibrated for) at a quarter
of its 16/64/256 KiB. A version-string rebuild changes ~51 scattered 4 KiB blocks of a 194 MB
usr.img; each change costs about one chunk, so ~0.8 MB at a 16 KiB average (0.4%, inside the
1% goal) against ~3 MB at casync's 64 KiB. A 200 MB image is ~12,000 chunks (files, GETs
of ~500 header bytes each: ~3% overhead), not 100,000; 4 KiB minimum keeps chunks no smaller
than a filesystem block.
"""
