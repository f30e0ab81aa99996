from qaclims.cli import main

main()
