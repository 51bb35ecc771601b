#!/usr/bin/env python3
"""libpostgres.py SERVER_BINARY OUT: a copy of the postgres binary that the
linker and the dynamic loader take as a shared library, so that a fuzz
harness can call the real backend (jsonb, jsonpath, elog, memory contexts)
without a server running.

The server exports every symbol already (extensions resolve against it); a
position-independent executable differs from a shared library only in three
places, each patched in the copy:

- DT_FLAGS_1 has DF_1_PIE, and glibc's loader refuses to load a PIE as a
  library: the flag is cleared.
- The executable's copies of library data (stderr, stdout, optarg, environ,
  libxml2's tables ...) are symbols it defines in its own .bss, filled by
  R_X86_64_COPY relocations.  Loaded as a library, that copy would resolve
  to itself (NULL) and, worse, every other library would bind stderr to it.
  Each such symbol is made undefined in the copy's dynamic symbol table, so
  lookups find libc's and the copy relocation fills the server's own slot
  from it (the server's code reads that slot directly).
- Its version sections list versions it needs but defines none, which
  linkers reject for defined symbols ("invalid version"): the section
  headers stop calling them version sections.  The loader reads versions
  from the dynamic section, which stays as it was.

x86-64 (ELF64, little-endian) only: the harnesses' platform.
"""
import struct
import sys

DT_NULL, DT_STRTAB, DT_SYMTAB, DT_RELA, DT_RELASZ = 0, 5, 6, 7, 8
DT_FLAGS_1, DF_1_PIE = 0x6FFFFFFB, 0x08000000
PT_LOAD, PT_DYNAMIC = 1, 2
R_X86_64_COPY = 5
SHT_PROGBITS = 1
SHT_GNU_VERSIONS = (0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF)  # verdef, verneed, versym
SYM_SIZE, RELA_SIZE = 24, 24


def patch(elf):
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1 or struct.unpack_from("<H", elf, 0x12)[0] != 62:
        sys.exit("libpostgres.py: not an x86-64 ELF64 file")
    phoff, shoff = struct.unpack_from("<QQ", elf, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", elf, 0x36)

    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        sys.exit("libpostgres.py: no dynamic section (a static binary?)")

    def file_offset(addr):
        for vaddr, offset, size in loads:
            if vaddr <= addr < vaddr + size:
                return addr - vaddr + offset
        sys.exit("libpostgres.py: address %#x is in no loaded segment" % addr)

    tags = {}
    pie = False
    for at in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", elf, at)
        if tag == DT_NULL:
            break
        tags[tag] = value
        if tag == DT_FLAGS_1 and value & DF_1_PIE:
            struct.pack_into("<Q", elf, at + 8, value & ~DF_1_PIE)
            pie = True

    symtab = file_offset(tags[DT_SYMTAB])
    copies = 0
    if DT_RELA in tags:
        rela = file_offset(tags[DT_RELA])
        for at in range(rela, rela + tags[DT_RELASZ], RELA_SIZE):
            _, info, _ = struct.unpack_from("<QQq", elf, at)
            if info & 0xFFFFFFFF == R_X86_64_COPY:
                sym = symtab + (info >> 32) * SYM_SIZE
                # st_shndx = SHN_UNDEF, st_value = 0: the loader skips it
                struct.pack_into("<HQ", elf, sym + 6, 0, 0)
                copies += 1

    for i in range(shnum):
        at = shoff + i * shentsize
        if struct.unpack_from("<I", elf, at + 4)[0] in SHT_GNU_VERSIONS:
            struct.pack_into("<I", elf, at + 4, SHT_PROGBITS)
    return pie, copies


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: libpostgres.py SERVER_BINARY OUT")
    with open(sys.argv[1], "rb") as f:
        elf = bytearray(f.read())
    pie, copies = patch(elf)
    with open(sys.argv[2], "wb") as f:
        f.write(elf)
    print("libpostgres.py: %s -> %s (%s, %d copied data symbols left to their libraries)"
          % (sys.argv[1], sys.argv[2], "PIE flag cleared" if pie else "not a PIE", copies))


if __name__ == "__main__":
    main()
