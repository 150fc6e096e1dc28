"""Pure, streaming readers/verifiers of the archive formats we store. No I/O beyond a byte stream."""
