{{ segment_members() }}
