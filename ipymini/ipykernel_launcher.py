"`python -m ipymini.ipykernel_launcher -f CONN`: the same as `python -m ipymini`, under the file name `sys.argv[0]` has in a kernel."
from ipymini.__main__ import main

if __name__ == "__main__": main()
