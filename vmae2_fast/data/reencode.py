"""`python -m vmae2_fast.data.reencode` answers for one release with the command of
`vmae2_fast.data.tools.reencode`, so that scripts written for this path keep running."""

if __name__ == "__main__":
    import sys

    from vmae2_fast.data.tools.reencode import main
    sys.exit(main())
