# Attack 4, mmap_touch: touch every page of a 4 GB anonymous mmap.
import mmap
m = mmap.mmap(-1, 4 << 30)
for i in range(0, len(m), 4096):
    m[i] = 1
print('touched 4 GiB')
