# Attack 6, sleep_hang: sleep for a very long time.
import time
time.sleep(10**6)
