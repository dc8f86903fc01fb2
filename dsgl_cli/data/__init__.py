"""dsgl_cli.data"""
