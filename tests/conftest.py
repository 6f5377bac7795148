import os
import sys

# The test files import the numpy oracle as a plain module: `from reference import ...`.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
