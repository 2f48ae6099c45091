#!/usr/bin/env python3
"""Writes src/rounds.s: BLAKE3 compression of 8 inputs side by side (one per 32-bit lane of the
AVX2 registers) over any number of blocks: the 16 blocks of 8 whole chunks, or the one block of
8 parent nodes. It rotates with shift-and-or (no byte shuffles). Run it after changing anything here; the output is committed.

Why it is shaped like this: under QEMU's TCG a vector operation between registers is cheap, but
every vector load or store of guest memory pays for an address translation, so the code keeps
memory traffic down. The 16 state vectors and one temporary need 17 registers; AVX2 has 16, so
one state vector at a time lives in memory. Which one is chosen by looking ahead (the vector
used again last is the one evicted), which costs a swap about once per half-round instead of a
spill and reload in every G. The chaining value stays in registers from block to block."""

SCHEDULE = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8],
    [3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1],
    [10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6],
    [12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4],
    [9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7],
    [11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13],
]
# Columns, then diagonals.
G = [(0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
     (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)]
# Where each row of the block's starting state comes from, beside the chaining value (v0-v7,
# kept in ymm0-ymm7): rdx points at IV0-IV3, counter low, counter high and block length rows;
# rcx at this block's flags row.
CONSTANT_ROWS = {8: "[rdx + 0]", 9: "[rdx + 32]", 10: "[rdx + 64]", 11: "[rdx + 96]",
                 12: "[rdx + 128]", 13: "[rdx + 160]", 14: "[rdx + 192]"}
FLAGS_ROW = "[rcx]"


def home(v):
    return f"[r8 + {32 * v}]"


def main():
    out = []
    emit = out.append
    y = lambda r: f"ymm{r}"
    uses = [g for _ in SCHEDULE for g in G]

    def next_use(v, after):
        for k in range(after, len(uses)):
            if v in uses[k]:
                return k
        return len(uses)  # the feed-forward

    # Block start: v0-v7 in ymm0-7, v8-v14 loaded, v15 (first used by the fourth G) left in
    # memory, ymm15 free.
    reg = {v: v for v in range(15)}
    mem = {15: FLAGS_ROW}
    free = 15
    for v, row in CONSTANT_ROWS.items():
        emit(f"    vmovdqu {y(v)}, {row}")

    def rotate_right(x, n, temp):
        emit(f"    vpsrld {y(temp)}, {y(x)}, {n}")
        emit(f"    vpslld {y(x)}, {y(x)}, {32 - n}")
        emit(f"    vpor {y(x)}, {y(x)}, {y(temp)}")

    for k, (a, b, c, d) in enumerate(uses):
        schedule = SCHEDULE[k // 8]
        i = k % 8
        mx, my = schedule[2 * i], schedule[2 * i + 1]
        (spilled,) = mem.keys()
        if spilled in (a, b, c, d):
            victim = max((v for v in reg if v not in (a, b, c, d)), key=lambda v: next_use(v, k))
            emit(f"    vmovdqu {y(free)}, {mem.pop(spilled)}")
            reg[spilled] = free
            emit(f"    vmovdqu {home(victim)}, {y(reg[victim])}")
            free = reg.pop(victim)
            mem[victim] = home(victim)
        ra, rb, rc, rd = reg[a], reg[b], reg[c], reg[d]
        emit(f"    vpaddd {y(ra)}, {y(ra)}, {y(rb)}")
        emit(f"    vpaddd {y(ra)}, {y(ra)}, [rsi + {32 * mx}]")
        emit(f"    vpxor {y(rd)}, {y(rd)}, {y(ra)}")
        rotate_right(rd, 16, free)
        emit(f"    vpaddd {y(rc)}, {y(rc)}, {y(rd)}")
        emit(f"    vpxor {y(rb)}, {y(rb)}, {y(rc)}")
        rotate_right(rb, 12, free)
        emit(f"    vpaddd {y(ra)}, {y(ra)}, {y(rb)}")
        emit(f"    vpaddd {y(ra)}, {y(ra)}, [rsi + {32 * my}]")
        emit(f"    vpxor {y(rd)}, {y(rd)}, {y(ra)}")
        rotate_right(rd, 8, free)
        emit(f"    vpaddd {y(rc)}, {y(rc)}, {y(rd)}")
        emit(f"    vpxor {y(rb)}, {y(rb)}, {y(rc)}")
        rotate_right(rb, 7, free)

    # Feed-forward: the new chaining value h_i = v_i ^ v_(i+8), left in ymm_i for the next block.
    (spilled,) = mem.keys()
    if spilled < 8:
        emit(f"    vmovdqu {y(free)}, {mem.pop(spilled)}")
        reg[spilled] = free
    for i in range(8):
        other = reg[i + 8] if (i + 8) in reg else None
        operand = y(other) if other is not None else mem[i + 8]
        emit(f"    vpxor {y(reg[i])}, {y(reg[i])}, {operand}")
    # Move h_i into ymm_i; registers not holding a chaining value row are free.
    where = {i: reg[i] for i in range(8)}
    while any(where[i] != i for i in range(8)):
        holders = set(where.values())
        progressed = False
        for i in range(8):
            if where[i] != i and i not in holders:
                emit(f"    vmovdqa {y(i)}, {y(where[i])}")
                where[i] = i
                progressed = True
                break
        if not progressed:  # a cycle: park one row in a free register
            spare = next(r for r in range(16) if r not in holders)
            i = next(i for i in range(8) if where[i] != i)
            emit(f"    vmovdqa {y(spare)}, {y(where[i])}")
            where[i] = spare
    body = "\n".join(out)
    header = (
        "// Generated by gen_rounds.py; do not edit. BLAKE3 compression of 8 inputs, one per 32-bit\n"
        "// lane, over r9 (at least 1) blocks: rdi, the chaining value (8 rows of 8 lanes), read\n"
        "// and written; rsi, the blocks' messages, each 16 rows of 8 lanes; rdx, rows IV0-IV3,\n"
        "// counter low, counter high, block length; rcx, one flags row per block; r8, 512 bytes\n"
        "// of scratch. Clobbers all vector registers (caller-saved), rax, rsi and rcx.\n"
        '    .section .text.cairn_b3x8_chunks, "ax"\n'
        "    .p2align 4\n"
        "    .global cairn_b3x8_chunks\n"
        "cairn_b3x8_chunks:\n"
    )
    load_h = "\n".join(f"    vmovdqu {y(i)}, [rdi + {32 * i}]" for i in range(8))
    store_h = "\n".join(f"    vmovdqu [rdi + {32 * i}], {y(i)}" for i in range(8))
    loop = (f"{load_h}\n    mov eax, r9d\n2:\n{body}\n"
            "    add rsi, 512\n    add rcx, 32\n    dec eax\n    jnz 2b\n"
            f"{store_h}\n    vzeroupper\n    ret\n")
    with open("src/rounds.s", "w") as f:
        f.write(header + loop)
    mem_ops = sum(1 for line in out if "[" in line)
    print(f"{len(out)} instructions per block, {mem_ops} with a memory operand")


if __name__ == "__main__":
    main()
