//! One function per transfer method. Each handles partial transfers and EINTR/EAGAIN, and turns a
//! peer that went away into a clear error.
use std::{
    fs::File,
    io::IoSlice,
    os::fd::{AsFd, OwnedFd},
};

use anyhow::{anyhow, Result};
use nix::{
    fcntl::{splice, tee, vmsplice, SpliceFFlags},
    sys::sendfile::sendfile,
    unistd::{read, write},
};

use super::{
    mapping::Mapping,
    sys::{explain, pipe_for, retry},
    uring, zerocopy, Method, SendOptions, Tally,
};

pub(crate) fn run(options: &SendOptions, file: &File, size: u64, out: OwnedFd) -> Result<Tally> {
    let mut run = Run {
        out,
        chunk: options.chunk,
        tally: Tally::default(),
        progress: options.progress,
    };
    match options.method {
        Method::ReadWrite => run.read_write(file)?,
        Method::MmapWrite => run.mmap_write(file, size)?,
        Method::Sendfile => run.sendfile(file, size)?,
        Method::Splice => run.splice(file, size)?,
        Method::Vmsplice => run.vmsplice(file, size)?,
        Method::Tee => run.tee(file, size)?,
        Method::IoUring => run.tally = uring::send(file, size, &run.out, run.chunk, run.progress)?,
        Method::Zerocopy => run.tally = zerocopy::send(file, size, &run.out, run.chunk, run.progress)?,
    }
    Ok(run.tally)
}

struct Run<'a> {
    out: OwnedFd,
    chunk: usize,
    tally: Tally,
    progress: Option<&'a dyn Fn(u64)>,
}

impl Run<'_> {
    fn advance(&mut self, bytes: usize) {
        self.tally.bytes += bytes as u64;
        if let Some(progress) = self.progress {
            progress(self.tally.bytes);
        }
    }

    fn remaining(&self, size: u64, limit: usize) -> usize {
        (size - self.tally.bytes).min(limit as u64) as usize
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let n = retry(|| write(&self.out, bytes)).map_err(|e| explain("write", e))?;
            self.tally.syscalls += 1;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Moves exactly `len` bytes from a pipe to the destination.
    fn drain(&mut self, pipe: impl AsFd, out: impl AsFd, mut len: usize) -> Result<()> {
        while len > 0 {
            let n = retry(|| splice(&pipe, None, &out, None, len, SpliceFFlags::SPLICE_F_MOVE))
                .map_err(|e| explain("splice from pipe", e))?;
            self.tally.syscalls += 1;
            if n == 0 {
                return Err(anyhow!(
                    "splice from pipe: the destination accepted no more bytes"
                ));
            }
            len -= n;
        }
        Ok(())
    }

    fn read_write(&mut self, file: &File) -> Result<()> {
        let mut buffer = vec![0u8; self.chunk];
        loop {
            let n = retry(|| read(file, &mut buffer)).map_err(|e| explain("read", e))?;
            self.tally.syscalls += 1;
            if n == 0 {
                return Ok(());
            }
            self.write_all(&buffer[..n])?;
            self.advance(n);
        }
    }

    fn mmap_write(&mut self, file: &File, size: u64) -> Result<()> {
        let Some(mapping) = Mapping::of(file, size)? else {
            return Ok(());
        };
        // Only the kernel touches the mapping here: a truncation makes write() fail with EFAULT.
        for piece in mapping.bytes().chunks(self.chunk) {
            self.write_all(piece)?;
            self.advance(piece.len());
        }
        Ok(())
    }

    fn sendfile(&mut self, file: &File, size: u64) -> Result<()> {
        while self.tally.bytes < size {
            let len = self.remaining(size, self.chunk);
            let n = retry(|| sendfile(&self.out, file, None, len)).map_err(|e| explain("sendfile", e))?;
            self.tally.syscalls += 1;
            if n == 0 {
                break;
            }
            self.advance(n);
        }
        Ok(())
    }

    fn splice(&mut self, file: &File, size: u64) -> Result<()> {
        let (reader, writer, capacity) = pipe_for(self.chunk)?;
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_MORE;
        while self.tally.bytes < size {
            let len = self.remaining(size, self.chunk.min(capacity));
            let n = retry(|| splice(file, None, &writer, None, len, flags))
                .map_err(|e| explain("splice into pipe", e))?;
            self.tally.syscalls += 1;
            if n == 0 {
                break;
            }
            let out = self.out.try_clone()?;
            self.drain(&reader, &out, n)?;
            self.advance(n);
        }
        Ok(())
    }

    fn vmsplice(&mut self, file: &File, size: u64) -> Result<()> {
        let Some(mapping) = Mapping::of(file, size)? else {
            return Ok(());
        };
        let (reader, writer, capacity) = pipe_for(self.chunk)?;
        let out = self.out.try_clone()?;
        for piece in mapping.bytes().chunks(self.chunk.min(capacity)) {
            let mut offset = 0;
            while offset < piece.len() {
                let iov = [IoSlice::new(&piece[offset..])];
                let n = retry(|| vmsplice(&writer, &iov, SpliceFFlags::empty()))
                    .map_err(|e| explain("vmsplice", e))?;
                self.tally.syscalls += 1;
                self.drain(&reader, &out, n)?;
                offset += n;
            }
            self.advance(piece.len());
        }
        Ok(())
    }

    fn tee(&mut self, file: &File, size: u64) -> Result<()> {
        let (reader, writer, capacity) = pipe_for(self.chunk)?;
        let (copy_reader, copy_writer, copy_capacity) = pipe_for(self.chunk)?;
        let sink: OwnedFd = File::options().write(true).open("/dev/null")?.into();
        let out = self.out.try_clone()?;
        while self.tally.bytes < size {
            let len = self.remaining(size, self.chunk.min(capacity).min(copy_capacity));
            let n = retry(|| splice(file, None, &writer, None, len, SpliceFFlags::SPLICE_F_MOVE))
                .map_err(|e| explain("splice into pipe", e))?;
            self.tally.syscalls += 1;
            if n == 0 {
                break;
            }
            let teed = retry(|| tee(&reader, &copy_writer, n, SpliceFFlags::empty()))
                .map_err(|e| explain("tee", e))?;
            self.tally.syscalls += 1;
            self.drain(&reader, &out, n)?;
            self.drain(&copy_reader, &sink, teed)?;
            self.advance(n);
        }
        Ok(())
    }
}
