//! The receive buffer under the stream decoders (SIP and SCCP over TCP): bytes are read
//! straight into it, whole frames are borrowed out of it, and consumed bytes are released
//! at the next call. Live bytes move to the front only once at least as many bytes were
//! consumed as are live, so decoding stays linear however many frames one read carries.

/// Live bytes are `buf[start..end]`; `buf[end..]` is initialised room to read into.
#[derive(Debug, Default)]
pub struct StreamBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of the frame last taken, released at the next call.
    consumed: usize,
    /// Bytes moved by compaction, to test that decoding stays linear.
    #[cfg(test)]
    pub moved: usize,
}

impl StreamBuffer {
    /// Room of at least `min` bytes to read into; follow with [`Self::commit`]. The
    /// slice may be longer than `min` and holds stale bytes.
    pub fn read_buf(&mut self, min: usize) -> &mut [u8] {
        self.release();
        if self.start > 0 && self.buf.len() - self.end < min {
            self.compact();
        }
        let needed = self.end + min;
        if self.buf.len() < needed {
            self.buf.reserve(needed - self.buf.len());
            self.buf.resize(self.buf.capacity(), 0);
        }
        &mut self.buf[self.end..]
    }

    /// Marks the first `n` bytes of the slice [`Self::read_buf`] returned as received.
    ///
    /// # Panics
    /// If `n` exceeds that slice.
    pub fn commit(&mut self, n: usize) {
        assert!(n <= self.buf.len() - self.end, "commit of {n} bytes beyond the read buffer");
        self.end += n;
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.read_buf(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// Drops the bytes of the frame last taken and compacts when that pays.
    pub fn release(&mut self) {
        self.start += std::mem::take(&mut self.consumed);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start >= self.end - self.start {
            self.compact();
        }
    }

    /// The received bytes not yet taken.
    pub fn live(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Takes the first `len` live bytes as a frame (released at the next call).
    pub fn take(&mut self, len: usize) -> &[u8] {
        self.consumed = len;
        &self.buf[self.start..self.start + len]
    }

    /// Bytes received and not yet taken.
    pub fn buffered(&self) -> usize {
        self.end - self.start - self.consumed
    }

    /// Bytes the buffer holds room for.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Frees everything (the stream broke).
    pub fn clear(&mut self) {
        *self = Self {
            #[cfg(test)]
            moved: self.moved,
            ..Self::default()
        };
    }

    /// Moves the live bytes to the front of the buffer.
    fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        #[cfg(test)]
        {
            self.moved += self.end - self.start;
        }
        self.end -= self.start;
        self.start = 0;
    }
}
