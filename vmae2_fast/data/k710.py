"""`python -m vmae2_fast.data.k710` answers for one release with the command of
`vmae2_fast.data.tools.k710`, so that scripts written for this path keep running."""

if __name__ == "__main__":
    import sys

    from vmae2_fast.data.tools.k710 import main
    sys.exit(main())
