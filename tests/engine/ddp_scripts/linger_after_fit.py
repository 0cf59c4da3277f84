"""Train the synthetic example, then the processes of node LINGER_NODE keep working
LINGER_S seconds (rank-local work after fit: writing this node's outputs, say)."""
import os
import sys
import time

from volt.examples import synthetic

if __name__ == "__main__":
    synthetic.main(sys.argv[1:])
    if os.environ["NODE_RANK"] == os.environ["LINGER_NODE"]:
        time.sleep(float(os.environ["LINGER_S"]))
