"Draw the kernelspec's logos (a blue rounded square with a yellow `i`) as PNGs, with nothing but zlib: `python tools/logo.py`."
import os, struct, zlib

blue,yellow,clear = (48, 105, 152, 255),(255, 212, 59, 255),(0, 0, 0, 0)

def inside(x, y):
    "The colour at `(x, y)` in a unit square: a rounded square, and in it an `i` (a dot over a stem with a foot)."
    r = 0.2
    cx,cy = min(max(x, r), 1 - r),min(max(y, r), 1 - r)
    if (x - cx)**2 + (y - cy)**2 > r*r: return clear
    if (x - 0.5)**2 + (y - 0.27)**2 < 0.085**2: return yellow
    if 0.42 < x < 0.58 and 0.42 < y < 0.8: return yellow
    if 0.34 < x < 0.66 and 0.72 < y < 0.8: return yellow
    return blue

def pixel(px, py, n, ss=4):
    "Average `ss`×`ss` samples of the pixel, so edges are smooth."
    cs = [inside((px + (i + 0.5)/ss)/n, (py + (j + 0.5)/ss)/n) for i in range(ss) for j in range(ss)]
    a = sum(c[3] for c in cs)
    if not a: return bytes(4)
    return bytes([round(sum(c[k]*c[3] for c in cs)/a) for k in range(3)] + [round(a/len(cs))])

def png(n) -> bytes:
    rows = b"".join(b"\0" + b"".join(pixel(x, y, n) for x in range(n)) for y in range(n))
    def chunk(kind, data): return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", n, n, 8, 6, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")

if __name__ == "__main__":
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "share", "jupyter", "kernels", "ipymini")
    for n in (32, 64):
        with open(os.path.join(d, f"logo-{n}x{n}.png"), "wb") as f: f.write(png(n))
